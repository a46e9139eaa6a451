//! `tern test ADDRESS` for an address whose route is a `webhook:` line:
//! one test notification POSTed with the daemon's request format, trust
//! anchors and resolver (`http::blocking`), the answer decided as the
//! daemon decides it (`delivery::webhook::outcome_of`).

use std::io::Write;

use super::super::{EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE};
use crate::config::Config;
use crate::delivery::outcome::Outcome;
use crate::delivery::webhook::{self, Notice};
use crate::http::Url;
use crate::routes::WebhookFormat;

pub fn run(
    cfg: &Config,
    line: usize,
    url: &Url,
    format: WebhookFormat,
    rcpt: &str,
    out: &mut impl Write,
) -> i32 {
    let format_name = match format {
        WebhookFormat::Ntfy => "ntfy",
        WebhookFormat::Json => "json",
    };
    let _ = writeln!(
        out,
        "* route: line {line} of the routes file: webhook {} (format={format_name})",
        url.redacted()
    );
    let notice = Notice {
        title: format!("tern test from {}", cfg.hostname),
        message: format!(
            "This is a test notification sent by `tern test` on {} for {rcpt}.",
            cfg.hostname
        ),
    };
    let req = webhook::request(url, format, &notice);
    let _ = writeln!(out, "POST {} ({} bytes)", url.redacted(), req.body.len());
    let result = crate::http::blocking::fetch_with_config(
        cfg,
        &req,
        crate::daemon::webhook::WEBHOOK_TIMEOUT,
    );
    match &result {
        Ok(r) => {
            let _ = writeln!(out, "HTTP status {}", r.status);
        }
        Err(e) => {
            let _ = writeln!(out, "{e}");
        }
    }
    match webhook::outcome_of(url, &result) {
        Outcome::Delivered { relay } => {
            let _ = writeln!(out, "\nResult: accepted by {relay}: the route works.");
            EX_OK
        }
        Outcome::Deferred(r) => {
            let _ = writeln!(out, "\nResult: not delivered (the daemon would retry): {r}");
            EX_TEMPFAIL
        }
        Outcome::Failed(r) => {
            let _ = writeln!(out, "\nResult: refused (the daemon would bounce): {r}");
            EX_UNAVAILABLE
        }
    }
}
