//! Webhook delivery (`routes` target `webhook:https://… format=ntfy|json`):
//! the message's Subject and first text/plain part ([`content`]) POSTed
//! as a notification, and the HTTP answer decided into one [`Outcome`]
//! for every recipient of the route.
//!
//! Formats: `ntfy` — the body is the text (`text/plain; charset=utf-8`),
//! the Subject goes in a `Title` header (as an RFC 2047 UTF-8 B-word when
//! it is not ASCII; ntfy decodes these); `json` — `{"title":…,"message":…}`
//! (`application/json`; Gotify's `/message` API takes it as is).
//!
//! Decision (once, into the outcome's variant): 2xx delivered; 4xx other
//! than 408 and 429 failed (bounced, the HTTP status in the DSN text);
//! 5xx, 408, 429, 3xx (redirects are not followed) and every connect,
//! TLS, timeout or response error deferred, on the SMTP retry schedule.

pub mod content;

use crate::delivery::outcome::{self, Outcome};
use crate::http::{HttpError, HttpRequest, HttpResponse, Method, Url};
use crate::routes::WebhookFormat;
pub use content::{notice_of, Notice, MAX_TEXT, MAX_TITLE, WEBHOOK_READ};

/// Most characters of a webhook's answer quoted in a deferral or bounce.
pub const MAX_DETAIL: usize = 120;

/// The POST for a notice.
pub fn request(url: &Url, format: WebhookFormat, notice: &Notice) -> HttpRequest {
    let (headers, body) = match format {
        WebhookFormat::Ntfy => {
            let mut headers = vec![(
                "Content-Type".to_string(),
                "text/plain; charset=utf-8".to_string(),
            )];
            if !notice.title.is_empty() {
                headers.push(("Title".to_string(), header_text(&notice.title)));
            }
            (headers, notice.message.clone().into_bytes())
        }
        WebhookFormat::Json => {
            let body = format!(
                "{{\"title\":{},\"message\":{}}}",
                crate::oauth::json::quote(&notice.title),
                crate::oauth::json::quote(&notice.message)
            );
            (
                vec![("Content-Type".to_string(), "application/json".to_string())],
                body.into_bytes(),
            )
        }
    };
    HttpRequest {
        method: Method::Post,
        url: url.clone(),
        headers,
        body,
    }
}

/// ASCII as is; anything else as one RFC 2047 UTF-8 B-word.
fn header_text(s: &str) -> String {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        s.to_string()
    } else {
        format!("=?UTF-8?B?{}?=", crate::auth::base64_encode(s.as_bytes()))
    }
}

/// The outcome of the POST for every recipient of the route.
pub fn outcome_of(url: &Url, result: &Result<HttpResponse, HttpError>) -> Outcome {
    // The query may hold a token: never in logs, state files or bounces.
    let name = url.redacted();
    let peer = url.host_field();
    match result {
        Ok(r) if (200..300).contains(&r.status) => Outcome::Delivered { relay: name },
        Ok(r) if (400..500).contains(&r.status) && r.status != 408 && r.status != 429 => {
            Outcome::Failed(outcome::webhook_refused(&name, r.status, &detail(&r.body)))
        }
        Ok(r) => Outcome::Deferred(outcome::webhook_unavailable(
            &name,
            r.status,
            &detail(&r.body),
        )),
        Err(HttpError::Connect(why)) => Outcome::Deferred(outcome::connect_failed(&peer, why)),
        Err(HttpError::Tls(why)) => Outcome::Deferred(outcome::tls_failed(&peer, why)),
        Err(HttpError::Timeout) => {
            Outcome::Deferred(outcome::timeout(&peer, "the webhook's HTTP response"))
        }
        Err(HttpError::InvalidRequest(why)) => {
            Outcome::Deferred(outcome::route_unusable(&format!("webhook {name}: {why}")))
        }
        Err(e @ (HttpError::TooLarge | HttpError::Malformed(_) | HttpError::Closed)) => {
            Outcome::Deferred(outcome::webhook_bad_response(&peer, &e.to_string()))
        }
    }
}

/// The first line of an answer, printable, at most [`MAX_DETAIL`]
/// characters.
fn detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    line.chars()
        .filter(|c| !c.is_control())
        .take(MAX_DETAIL)
        .collect::<String>()
        .trim()
        .to_string()
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::delivery::outcome::Origin;

    fn url() -> Url {
        Url::parse("https://ntfy.example/alerts").unwrap()
    }

    fn notice(title: &str, message: &str) -> Notice {
        Notice {
            title: title.into(),
            message: message.into(),
        }
    }

    #[test]
    fn ntfy_request() {
        let r = request(
            &url(),
            WebhookFormat::Ntfy,
            &notice("Disk full", "sda1 97%\nbye"),
        );
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.body, b"sda1 97%\nbye");
        assert_eq!(
            r.headers,
            vec![
                ("Content-Type".into(), "text/plain; charset=utf-8".into()),
                ("Title".into(), "Disk full".into())
            ]
        );
        let r = request(&url(), WebhookFormat::Ntfy, &notice("échec", ""));
        assert_eq!(r.headers[1].1, "=?UTF-8?B?w6ljaGVj?=");
        let r = request(&url(), WebhookFormat::Ntfy, &notice("", "x"));
        assert_eq!(r.headers.len(), 1);
    }

    #[test]
    fn json_request_escapes() {
        let r = request(
            &url(),
            WebhookFormat::Json,
            &notice("a \"q\" \\ b", "l1\nl2\t\u{1}é\u{2028}"),
        );
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            "{\"title\":\"a \\\"q\\\" \\\\ b\",\"message\":\"l1\\nl2\\t\\u0001é\\u2028\"}"
        );
        assert_eq!(
            r.headers,
            vec![("Content-Type".into(), "application/json".into())]
        );
    }

    fn response(status: u16, body: &[u8]) -> Result<HttpResponse, HttpError> {
        Ok(HttpResponse {
            status,
            headers: vec![],
            body: body.to_vec(),
        })
    }

    #[test]
    fn outcomes() {
        let u = url();
        assert_eq!(
            outcome_of(&u, &response(200, b"{}")),
            Outcome::Delivered {
                relay: "https://ntfy.example/alerts".into()
            }
        );
        assert!(matches!(
            outcome_of(&u, &response(204, b"")),
            Outcome::Delivered { .. }
        ));
        let Outcome::Failed(r) = outcome_of(&u, &response(404, b"{\"error\":\"no topic\"}\nmore"))
        else {
            panic!()
        };
        assert_eq!((r.code, r.status.to_string()), (550, "5.0.0".to_string()));
        assert_eq!(
            r.origin,
            Origin::Webhook {
                url: "https://ntfy.example/alerts".into()
            }
        );
        assert_eq!(
            r.to_string(),
            "webhook https://ntfy.example/alerts answered HTTP status 404: {\"error\":\"no topic\"}"
        );
        for status in [500, 503, 408, 429, 301, 302] {
            let o = outcome_of(&u, &response(status, b""));
            let Outcome::Deferred(r) = o else {
                panic!("{status}: {o:?}")
            };
            assert_eq!(r.code, 451);
            assert!(r.text.contains(&format!("HTTP status {status}")));
        }
        for e in [
            HttpError::Connect("connection refused".into()),
            HttpError::Tls("invalid peer certificate: UnknownIssuer".into()),
            HttpError::Timeout,
            HttpError::TooLarge,
            HttpError::Malformed("bad status line"),
            HttpError::Closed,
        ] {
            let o = outcome_of(&u, &Err(e.clone()));
            assert!(matches!(o, Outcome::Deferred(_)), "{e:?}: {o:?}");
        }
        let secret = Url::parse("https://gotify.example/message?token=S3cret").unwrap();
        let Outcome::Failed(r) = outcome_of(&secret, &response(401, b"bad token")) else {
            panic!()
        };
        assert_eq!(
            r.to_string(),
            "webhook https://gotify.example/message?… answered HTTP status 401: bad token"
        );
        let Outcome::Deferred(r) = outcome_of(&u, &Err(HttpError::Tls("unknown issuer".into())))
        else {
            panic!()
        };
        assert_eq!(r.origin, Origin::Tls);
        assert!(r.text.contains("ntfy.example"), "{}", r.text);
    }
}
