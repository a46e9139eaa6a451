//! Driver for OAuth2 token endpoint answers (issue 14 part 3; target
//! `oauth_json`): `oauth::json::parse_object`, `grant::token_response`,
//! `grant::device_response` and the device-flow `DevicePoller`.
//!
//! Input: two bytes of HTTP status (big-endian, any value), then the body.
//!
//! Properties: no panic; a parsed object printed back (strings through
//! `json::quote`, numbers as their text, nested values as `[]`) parses to
//! the same members; a member is never named twice; every error's offset
//! is within the body; a token answer is a success only for a 2xx status
//! and then has a visible-ASCII access token (and refresh token) within
//! `MAX_TOKEN_LEN`; error text (what the log shows) is printable ASCII
//! and bounded; a device answer's codes and URL are visible ASCII and its
//! interval within 1 s..`MAX_POLL_INTERVAL`; a poller's interval never
//! passes `MAX_POLL_INTERVAL`.

use crate::oauth::grant::{self, DevicePoller, Poll, MAX_ERROR_TEXT, MAX_TOKEN_LEN};
use crate::oauth::json::{self, Value};

use super::Input;

pub fn oauth_json(data: &[u8]) {
    let mut input = Input::new(data);
    let status = input.u16();
    let body = input.bytes(data.len());
    match json::parse_object(body) {
        Ok(object) => {
            let mut names: Vec<&str> = object.members.iter().map(|(n, _)| n.as_str()).collect();
            names.sort_unstable();
            let count = names.len();
            names.dedup();
            assert_eq!(names.len(), count, "a name twice");
            let printed = format!(
                "{{{}}}",
                object
                    .members
                    .iter()
                    .map(|(n, v)| format!("{}:{}", json::quote(n), print(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let again = json::parse_object(printed.as_bytes())
                .unwrap_or_else(|e| panic!("printed object does not parse: {e}: {printed}"));
            assert_eq!(again, object);
        }
        Err(e) => assert!(e.offset <= body.len(), "{e}"),
    }
    let graphic = |t: &str| {
        !t.is_empty() && t.len() <= MAX_TOKEN_LEN && t.bytes().all(|b| b.is_ascii_graphic())
    };
    let shown = |e: &grant::GrantError| {
        let text = e.to_string();
        assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)), "{text}");
        assert!(text.len() <= 2 * MAX_ERROR_TEXT + 200, "{}", text.len());
    };
    match grant::token_response(status, body) {
        Ok(t) => {
            assert!((200..=299).contains(&status));
            assert!(graphic(&t.access_token));
            assert!(t.refresh_token.as_deref().is_none_or(graphic));
            assert!(t.cache_for() >= grant::MIN_CACHE);
        }
        Err(e) => shown(&e),
    }
    match grant::device_response(status, body) {
        Ok(d) => {
            assert!((200..=299).contains(&status));
            assert!(graphic(&d.device_code) && graphic(&d.user_code));
            assert!(graphic(&d.verification_uri));
            assert!(d.interval >= std::time::Duration::from_secs(1));
            assert!(d.interval <= grant::MAX_POLL_INTERVAL);
            let mut poller = DevicePoller::new(&d);
            for _ in 0..3 {
                match poller.handle_response(status, body) {
                    Poll::Again(i) => assert!(i <= grant::MAX_POLL_INTERVAL),
                    Poll::Done(t) => assert!(graphic(&t.access_token)),
                    Poll::Failed(e) => shown(&e),
                }
            }
        }
        Err(e) => shown(&e),
    }
}

fn print(v: &Value) -> String {
    match v {
        Value::String(s) => json::quote(s),
        Value::Number(n) => n.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Nested => "[]".into(),
    }
}
