//! Delivery status notifications sent by the runner: bounces for failed
//! recipients (honouring RFC 3461 `NOTIFY`, `RET`, `ENVID`, `ORCPT`) and
//! success reports for `NOTIFY=SUCCESS` recipients delivered here or
//! handed to a server without DSN. Each goes through the spool like any
//! message, from `<>`, never to `<>`.

use super::{bounce_recipients, failed_recipient, InFlight, QueueRunner};
use crate::bounce::{
    build_bounce, header_block, rfc5322_date, BounceInput, DsnAction, FailedRecipient, Returned,
    MAX_RETURNED_MESSAGE,
};
use crate::daemon::{mono_now, unix_now, Io};
use crate::delivery::Destination;
use crate::smtp::dsn::Ret;
use crate::spool::envelope::Recipient;
use crate::spool::{QueueId, RcptStatus, StoredEnvelope};

/// Bytes of the original message's header returned in a bounce.
const BOUNCE_HEADER_READ: usize = 64 * 1024;

/// `Original-Recipient` of a report: the recipient's ORCPT, if given.
pub(super) fn orcpt_of(rcpt: &Recipient) -> Option<(String, String)> {
    rcpt.dsn
        .orcpt
        .as_ref()
        .map(|o| (o.addr_type.clone(), o.addr.clone()))
}

impl QueueRunner {
    /// Sends one delivery status notification for the failed recipients
    /// that asked for one (no `NOTIFY`, or `NOTIFY` with `FAILURE`).
    /// Never for the null sender.
    pub(super) fn bounce(&mut self, io: &mut Io, id: QueueId, flight: &InFlight) {
        if flight.env.sender.is_empty() {
            log::warn!("{id}: undeliverable message from <>; discarded without a bounce");
            return;
        }
        let failed: Vec<FailedRecipient> = flight
            .newly_failed()
            .filter(|(r, _)| r.dsn.wants_failure())
            .map(|(r, s)| FailedRecipient {
                original_recipient: orcpt_of(r),
                ..failed_recipient(r.final_address(&io.cfg.hostname), s)
            })
            .collect();
        if failed.is_empty() {
            log::info!("{id}: no failure notification asked for (NOTIFY)");
            return;
        }
        let full = flight.env.dsn.ret == Some(Ret::Full);
        self.send_report(io, id, &flight.env, &failed, full, "non-delivery");
    }

    /// Builds and queues a report on `recipients` of message `id`.
    /// `full`: `RET=FULL`, the whole message goes back (bounded).
    pub(super) fn send_report(
        &mut self,
        io: &mut Io,
        id: QueueId,
        original: &StoredEnvelope,
        recipients: &[FailedRecipient],
        full: bool,
        kind: &str,
    ) {
        let headers = original_headers(io, id);
        let message = if full { original_message(io, id) } else { None };
        let returned = match (full, &message) {
            (false, _) => Returned::Headers,
            (true, Some(m)) => Returned::Full(m),
            (true, None) => Returned::HeadersTooLarge,
        };
        let now = unix_now();
        self.local_seq += 1;
        let message_id = format!("<{}.{}.bounce@{}>", id, self.local_seq, io.cfg.hostname);
        let boundary = format!("{id}.{now}/{}", io.cfg.hostname);
        let text = build_bounce(&BounceInput {
            reporting_mta: &io.cfg.hostname,
            queue_id: id.text().as_str(),
            original_sender: &original.sender,
            arrival_date: &rfc5322_date(original.arrival as i64, 0),
            now_date: &rfc5322_date(now as i64, 0),
            message_id: &message_id,
            boundary: &boundary,
            recipients,
            original_headers: &headers,
            envid: original.dsn.envid.as_deref(),
            returned,
        });
        let env = StoredEnvelope {
            id: QueueId(0),
            arrival: now,
            sender: String::new(),
            recipients: bounce_recipients(io, &original.sender),
            client: format!("{} [local]", io.cfg.hostname),
            origin: crate::rewrite::SenderOrigin::Other,
            // The returned header section may carry 8-bit octets (labelled
            // 8bit by build_bounce): the relay must know (BODY=8BITMIME or
            // the 7-bit downgrade).
            eight_bit: !text.is_ascii(),
            smtputf8: false,
            // RFC 8689 §5: a report returns the protected message's header
            // section (or all of it), so it is relayed under the same rule
            // (REQUIRETLS hops only; a local sender gets it locally).
            requiretls: original.requiretls,
            dsn: Default::default(),
            body_offset: 0,
        };
        let received = format!(
            "Received: by {} (tern) id {id}; {}\r\n",
            io.cfg.hostname,
            rfc5322_date(now as i64, 0)
        );
        match io.spool.create(&env).and_then(|mut inc| {
            inc.write(received.as_bytes())?;
            inc.write(&text)?;
            Ok(inc)
        }) {
            Ok(inc) => {
                let bid = inc.id;
                match io.spool.commit(vec![inc]).pop() {
                    Some(Ok(bid)) => {
                        log::info!("{id}: sender {kind} notification: {bid}");
                        self.queue.schedule(bid, mono_now());
                    }
                    _ => log::error!("{id}: could not queue the report {bid}"),
                }
            }
            Err(e) => log::error!("{id}: could not create the report: {e}"),
        }
    }

    /// Success reports (`NOTIFY=SUCCESS`, RFC 3461 §4.1) for the
    /// recipients delivered in this attempt: `delivered` to a mailbox here
    /// (or through LMTP), `relayed` to a server without DSN. A server
    /// that offered DSN got the parameters and reports itself.
    pub(super) fn success_report(&mut self, io: &mut Io, id: QueueId, flight: &InFlight) {
        if flight.env.sender.is_empty() {
            return;
        }
        let recipients: Vec<FailedRecipient> = flight
            .env
            .recipients
            .iter()
            .zip(&flight.states)
            .zip(&flight.loaded)
            .enumerate()
            .filter(|(i, ((r, now), before))| {
                now.status == RcptStatus::Sent
                    && before.status != RcptStatus::Sent
                    && r.dsn.wants_success()
                    && !flight.dsn_passed.contains(i)
            })
            .map(|(_, ((r, _), _))| FailedRecipient {
                address: r.final_address(&io.cfg.hostname),
                status: "2.0.0".into(),
                action: match r.dest {
                    Destination::Remote(_) => DsnAction::Relayed,
                    _ => DsnAction::Delivered,
                },
                remote_mta: None,
                diagnostic: None,
                explanation: None,
                original_recipient: orcpt_of(r),
            })
            .collect();
        if !recipients.is_empty() {
            self.send_report(io, id, &flight.env, &recipients, false, "success");
        }
    }
}

/// Whether this attempt sends the delay warning: the queue age reached
/// `delay_warning_time` since the age last stored (`None`: off).
pub(super) fn delay_warning_due(
    delay_warning_time: Option<std::time::Duration>,
    stored_age: u64,
    age: u64,
) -> bool {
    delay_warning_time.is_some_and(|d| stored_age < d.as_secs() && age >= d.as_secs())
}

impl QueueRunner {
    /// The delay warning (RFC 3464 `Action: delayed`) for the recipients
    /// still open that did not decline it (`NOTIFY` without `DELAY`).
    pub(super) fn delay_warning(&mut self, io: &mut Io, id: QueueId, flight: &InFlight) {
        if flight.env.sender.is_empty() {
            return;
        }
        let delayed: Vec<FailedRecipient> = flight
            .env
            .recipients
            .iter()
            .zip(&flight.states)
            .filter(|(r, s)| !s.status.is_final() && r.dsn.wants_delay())
            .map(|(r, s)| {
                let f = failed_recipient(r.final_address(&io.cfg.hostname), s);
                FailedRecipient {
                    action: DsnAction::Delayed,
                    status: match &s.reason {
                        Some(_) if f.status.starts_with("4.") => f.status,
                        _ => "4.0.0".into(),
                    },
                    original_recipient: orcpt_of(r),
                    ..f
                }
            })
            .collect();
        if !delayed.is_empty() {
            self.send_report(io, id, &flight.env, &delayed, false, "delay");
        }
    }
}

fn original_headers(io: &Io, id: QueueId) -> Vec<u8> {
    use std::io::Read;
    let Ok((file, _)) = io.spool.open_content(id) else {
        return Vec::new();
    };
    let mut buf = Vec::new();
    let _ = file.take(BOUNCE_HEADER_READ as u64).read_to_end(&mut buf);
    header_block(&buf).to_vec()
}

/// The whole message for `RET=FULL`, read bounded: `None` when it is
/// larger than [`MAX_RETURNED_MESSAGE`] (or unreadable).
fn original_message(io: &Io, id: QueueId) -> Option<Vec<u8>> {
    use std::io::Read;
    let (file, _) = io.spool.open_content(id).ok()?;
    let mut buf = Vec::new();
    file.take(MAX_RETURNED_MESSAGE as u64 + 1)
        .read_to_end(&mut buf)
        .ok()?;
    (buf.len() <= MAX_RETURNED_MESSAGE).then_some(buf)
}

#[cfg(test)]
mod tests {
    use super::delay_warning_due;
    use std::time::Duration;

    #[test]
    fn the_delay_warning_is_due_once_when_the_age_passes_the_limit() {
        let h4 = Some(Duration::from_secs(4 * 3600));
        assert!(!delay_warning_due(None, 0, 10 * 86400));
        assert!(!delay_warning_due(h4, 0, 4 * 3600 - 1));
        assert!(delay_warning_due(h4, 0, 4 * 3600));
        assert!(delay_warning_due(h4, 3 * 3600, 5 * 3600));
        // Stored past it: warned already.
        assert!(!delay_warning_due(h4, 4 * 3600, 6 * 3600));
    }
}
