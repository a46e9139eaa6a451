//! Webhook jobs in the loop: a message's recipients routed to one
//! `webhook:` target become one [`WebhookJob`]; it reads at most
//! [`WEBHOOK_READ`] bytes of the spool file (one bounded read of a local
//! file when the job starts), builds the notification
//! (`delivery::webhook`), runs the POST on the [`HttpDriver`] and reports
//! one outcome for all its recipients, as a [`JobReport`] like any
//! outbound job. At most [`MAX_WEBHOOKS`] run at once; the rest wait.

use std::collections::{HashMap, VecDeque};
use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dns::DnsDriver;
use super::http::{HttpDriver, HttpHandle};
use super::outbound::JobReport;
use super::Io;
use crate::delivery::outcome::{self, Outcome};
use crate::delivery::webhook::{self, WEBHOOK_READ};
use crate::dns::{DnsError, LookupId, MxHost};
use crate::http::Url;
use crate::reactor::{Reactor, SockId};
use crate::routes::WebhookFormat;
use crate::spool::QueueId;

/// Webhook POSTs running at once.
pub const MAX_WEBHOOKS: usize = 4;
/// The whole exchange: DNS, connect, TLS, request, response.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// One message's recipients for one webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookJob {
    pub id: QueueId,
    pub url: Url,
    pub format: WebhookFormat,
    /// Indexes in the envelope.
    pub recipients: Vec<usize>,
}

#[derive(Default)]
pub struct Webhooks {
    http: HttpDriver,
    waiting: VecDeque<WebhookJob>,
    running: HashMap<HttpHandle, WebhookJob>,
    reports: Vec<JobReport>,
}

impl Webhooks {
    pub fn submit(&mut self, job: WebhookJob) {
        self.waiting.push_back(job);
    }

    /// Jobs waiting for a slot.
    pub fn backlog(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Waiting jobs stay in the spool for the restart.
    pub fn shutdown(&mut self) {
        self.waiting.clear();
    }

    pub fn owns(&self, sock: SockId) -> bool {
        self.http.owns(sock)
    }

    pub fn owns_lookup(&self, id: LookupId) -> bool {
        self.http.owns_lookup(id)
    }

    /// Starts waiting jobs while slots are free.
    pub fn poll(
        &mut self,
        io: &mut Io,
        dns: &mut DnsDriver,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Vec<JobReport> {
        while self.running.len() < MAX_WEBHOOKS {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            self.start(io, dns, tls.clone(), job);
        }
        self.collect()
    }

    pub fn handle_ready(
        &mut self,
        reactor: &mut Reactor<super::Timer>,
        sock: SockId,
    ) -> Vec<JobReport> {
        self.http.handle_ready(reactor, sock, Instant::now());
        self.collect()
    }

    pub fn handle_answer(
        &mut self,
        reactor: &mut Reactor<super::Timer>,
        id: LookupId,
        result: Result<Vec<MxHost>, DnsError>,
    ) -> Vec<JobReport> {
        self.http.handle_answer(reactor, id, result);
        self.collect()
    }

    pub fn sweep(&mut self, reactor: &mut Reactor<super::Timer>, now: Instant) -> Vec<JobReport> {
        self.http.sweep(reactor, now);
        self.collect()
    }

    fn start(
        &mut self,
        io: &mut Io,
        dns: &mut DnsDriver,
        tls: Option<Arc<rustls::ClientConfig>>,
        job: WebhookJob,
    ) {
        let mut text = Vec::new();
        let read = io
            .spool
            .open_content(job.id)
            .and_then(|(f, _)| f.take(WEBHOOK_READ as u64).read_to_end(&mut text));
        if let Err(e) = read {
            log::error!("{}: cannot read queue file: {e}", job.id);
            let o = Outcome::Deferred(outcome::queue_file_unreadable(&e.to_string()));
            self.report(&job, &o);
            return;
        }
        let notice = webhook::notice_of(&text);
        let req = webhook::request(&job.url, job.format, &notice);
        log::debug!(
            "{}: POST {} ({} bytes)",
            job.id,
            job.url.redacted(),
            req.body.len()
        );
        let handle = self
            .http
            .start(io.reactor, dns, tls, &req, WEBHOOK_TIMEOUT, Instant::now());
        self.running.insert(handle, job);
    }

    fn collect(&mut self) -> Vec<JobReport> {
        for (handle, result) in self.http.take_done() {
            let Some(job) = self.running.remove(&handle) else {
                continue;
            };
            match &result {
                Ok(r) => log::debug!(
                    "{}: webhook {}: HTTP {}",
                    job.id,
                    job.url.redacted(),
                    r.status
                ),
                Err(e) => log::debug!("{}: webhook {}: {e}", job.id, job.url.redacted()),
            }
            let o = webhook::outcome_of(&job.url, &result);
            self.report(&job, &o);
        }
        std::mem::take(&mut self.reports)
    }

    fn report(&mut self, job: &WebhookJob, o: &Outcome) {
        self.reports.push(JobReport {
            id: job.id,
            outcomes: job.recipients.iter().map(|&i| (i, o.clone())).collect(),
            // A web service sends no delivery notifications.
            dsn_passed: false,
        });
    }
}
