//! What the server must offer before MAIL, and the ESMTP parameters of
//! MAIL and RCPT: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531),
//! REQUIRETLS (RFC 8689) and the DSN parameters (RFC 3461), each only to a
//! server that lists its extension (a server refuses what it did not offer).

use super::own_replies::*;
use super::{synth, ClientSession, Own, RcptOutcome, ServerReply, Transaction};

impl ClientSession {
    /// Why the transaction cannot start on this server, for every
    /// recipient: too big for its SIZE, needs SMTPUTF8 or REQUIRETLS (under
    /// TLS) that it does not offer. Permanent: another attempt at the same
    /// server would meet the same answer.
    pub(super) fn refusal_before_mail(&self, txn: &Transaction) -> Option<RcptOutcome> {
        if let Some(limit) = self.size_limit() {
            if txn.size > limit {
                return Some(RcptOutcome::Failed(ServerReply {
                    code: TOO_BIG_CODE,
                    raw: format!("{TOO_BIG_TEXT} {limit} octets"),
                    own: Some(Own::Client),
                }));
            }
        }
        if txn.smtputf8 && !self.offers("SMTPUTF8") {
            return Some(RcptOutcome::Failed(synth(SMTPUTF8_NOT_OFFERED)));
        }
        if txn.requiretls && !(self.tls_active && self.offers("REQUIRETLS")) {
            return Some(RcptOutcome::Failed(synth(REQUIRETLS_NOT_OFFERED)));
        }
        None
    }

    /// The MAIL command and each recipient's RCPT parameters. `extra` is
    /// what goes in front of the stored message (a DKIM signature), counted
    /// in SIZE.
    pub(super) fn mail_and_rcpt_params(
        &self,
        txn: &Transaction,
        extra: u64,
    ) -> (String, Vec<String>) {
        use std::fmt::Write as _;
        // Sized once for the usual parameters.
        let mut mail_command = String::with_capacity(txn.sender.len() + 64);
        let _ = write!(mail_command, "MAIL FROM:<{}>", txn.sender);
        if self.offers("SIZE") {
            let size = txn.size + extra;
            let _ = write!(mail_command, " SIZE={size}");
        }
        if txn.eight_bit && self.offers("8BITMIME") {
            mail_command.push_str(" BODY=8BITMIME");
        }
        if txn.smtputf8 {
            mail_command.push_str(" SMTPUTF8");
        }
        if txn.requiretls {
            mail_command.push_str(" REQUIRETLS");
        }
        // RFC 3461: the parameters go only to a server that offers DSN
        // (else it would refuse them); see `offers_dsn` for the reports
        // tern then sends itself.
        let dsn = self.offers("DSN");
        if dsn {
            mail_command.push_str(&txn.dsn.mail_suffix());
        }
        // Without DSN (or with no recipient parameters) every recipient's
        // parameters are empty: no list (a missing entry reads as none).
        let rcpt_params = if dsn && !txn.dsn.rcpts.is_empty() {
            (0..txn.recipients.len())
                .map(|i| txn.dsn.rcpt_suffix(i))
                .collect()
        } else {
            Vec::new()
        };
        (mail_command, rcpt_params)
    }
}
