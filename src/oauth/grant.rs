//! The OAuth2 requests tern makes and what their answers mean, sans-IO:
//! the refresh-token grant (RFC 6749 §6) for the daemon and `tern test`,
//! and the device authorization grant (RFC 8628) for `tern oauth login`.
//!
//! Requests are `application/x-www-form-urlencoded` bodies
//! ([`form_encode`]: everything but RFC 3986 unreserved characters is
//! percent-encoded, so `+`, `&`, `=` and `%` in a secret survive). Answers
//! are JSON objects read by [`super::json`]; a success needs a usable
//! `access_token`, an error answer (RFC 6749 §5.2) becomes a
//! [`GrantError`] that names the HTTP status, `error` and
//! `error_description` (escaped for the log, bounded), never a token.

use std::fmt;
use std::time::Duration;

use super::json::{self, Object};
use crate::logsafe::LogSafe;

/// Longest `error`/`error_description` text kept for the log.
pub const MAX_ERROR_TEXT: usize = 300;
/// Longest access or refresh token accepted (Microsoft's are ~2–3 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// How long before its `expires_in` a cached access token is refreshed.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(5 * 60);
/// Shortest time a token is cached (an `expires_in` below the margin).
pub const MIN_CACHE: Duration = Duration::from_secs(30);
/// Token lifetime assumed when the answer has no `expires_in`.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(45 * 60);

/// The device-code grant type (RFC 8628 §3.4).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// `application/x-www-form-urlencoded` of `pairs`: names and values
/// percent-encoded except ALPHA, DIGIT, `-`, `.`, `_`, `~`.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode(name, &mut out);
        out.push('=');
        percent_encode(value, &mut out);
    }
    out
}

fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The body of a refresh-token grant request.
pub fn refresh_request(
    refresh_token: &str,
    client_id: &str,
    client_secret: Option<&str>,
) -> String {
    let mut pairs = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", client_id),
    ];
    if let Some(secret) = client_secret {
        pairs.push(("client_secret", secret));
    }
    form_encode(&pairs)
}

/// A token endpoint's successful answer (RFC 6749 §5.1).
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    pub access_token: String,
    /// `expires_in`, when sent.
    pub expires_in: Option<Duration>,
    /// A new refresh token (the provider rotated it), when sent.
    pub refresh_token: Option<String>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tokens {{ access_token: <hidden>, expires_in: {:?}, refresh_token: {} }}",
            self.expires_in,
            if self.refresh_token.is_some() {
                "<hidden>"
            } else {
                "None"
            }
        )
    }
}

impl Tokens {
    /// How long to use the access token: `expires_in` less
    /// [`EXPIRY_MARGIN`] (half of it when that is short), at least
    /// [`MIN_CACHE`]; [`DEFAULT_LIFETIME`] without `expires_in`.
    pub fn cache_for(&self) -> Duration {
        match self.expires_in {
            None => DEFAULT_LIFETIME,
            Some(life) if life > EXPIRY_MARGIN * 2 => life - EXPIRY_MARGIN,
            Some(life) => (life / 2).max(MIN_CACHE),
        }
    }
}

/// Why a token endpoint gave no token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// An error answer (RFC 6749 §5.2): the HTTP status, `error` and
    /// `error_description` (both escaped and bounded).
    Refused {
        status: u16,
        error: Option<String>,
        description: Option<String>,
    },
    /// A success status whose body is not a usable token answer.
    BadAnswer { status: u16, why: String },
}

impl GrantError {
    /// The `error` code of a refusal (`invalid_grant`, `authorization_pending`...).
    pub fn code(&self) -> Option<&str> {
        match self {
            GrantError::Refused { error, .. } => error.as_deref(),
            GrantError::BadAnswer { .. } => None,
        }
    }
}

impl fmt::Display for GrantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantError::Refused {
                status,
                error,
                description,
            } => {
                write!(f, "HTTP {status}")?;
                if let Some(e) = error {
                    write!(f, " error={e}")?;
                }
                if let Some(d) = description {
                    write!(f, " error_description=\"{d}\"")?;
                }
                if error.is_none() && description.is_none() {
                    f.write_str(" (no OAuth2 error in the body)")?;
                }
                Ok(())
            }
            GrantError::BadAnswer { status, why } => {
                write!(f, "HTTP {status} with an unusable answer: {why}")
            }
        }
    }
}

/// Text from the answer for the log: escaped (printable ASCII only),
/// cut to [`MAX_ERROR_TEXT`] characters.
fn log_text(s: &str) -> String {
    let mut out = LogSafe(s).to_string().replace('"', "'");
    if out.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        out.push_str("...");
    }
    out
}

/// A token: visible ASCII, bounded (RFC 6750 §2.1 b64token and more).
fn token_ok(t: &str) -> bool {
    !t.is_empty() && t.len() <= MAX_TOKEN_LEN && t.bytes().all(|b| b.is_ascii_graphic())
}

/// The error of an error answer, if the body carries one.
fn refusal(status: u16, object: Option<&Object>) -> GrantError {
    let field = |name| object.and_then(|o| o.str(name)).map(log_text);
    GrantError::Refused {
        status,
        error: field("error"),
        description: field("error_description"),
    }
}

/// The JSON object of a 2xx answer without an `error` member; anything
/// else is the endpoint's refusal or a bad answer.
fn success_object(status: u16, body: &[u8]) -> Result<json::Object, GrantError> {
    match (json::parse_object(body), status) {
        (Ok(o), 200..=299) if o.get("error").is_none() => Ok(o),
        (Ok(o), _) => Err(refusal(status, Some(&o))),
        (Err(_), 200..=299) => Err(GrantError::BadAnswer {
            status,
            why: "the body is not a JSON object".into(),
        }),
        (Err(_), _) => Err(refusal(status, None)),
    }
}

/// What a token endpoint's answer (status and body) means.
pub fn token_response(status: u16, body: &[u8]) -> Result<Tokens, GrantError> {
    let object = &success_object(status, body)?;
    let bad = |why: &str| GrantError::BadAnswer {
        status,
        why: why.into(),
    };
    let access_token = object
        .str("access_token")
        .ok_or_else(|| bad("no access_token"))?;
    if !token_ok(access_token) {
        return Err(bad("the access_token is not a token"));
    }
    if let Some(kind) = object.str("token_type") {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(bad("token_type is not Bearer"));
        }
    }
    let refresh_token = match object.str("refresh_token") {
        Some(t) if token_ok(t) => Some(t.to_string()),
        Some(_) => return Err(bad("the refresh_token is not a token")),
        None => None,
    };
    Ok(Tokens {
        access_token: access_token.to_string(),
        expires_in: object.uint("expires_in").map(Duration::from_secs),
        refresh_token,
    })
}

// ---------------------------------------------------------------------------
// The device authorization grant (RFC 8628)

/// Longest a device-flow poll interval may become (after `slow_down`s).
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// Interval when the device answer names none (RFC 8628 §3.2).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// `slow_down` adds this to the interval (RFC 8628 §3.5).
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Longest a login waits for the user when the answer names no `expires_in`.
pub const DEFAULT_DEVICE_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// The device authorization answer (RFC 8628 §3.2).
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    /// `verification_uri` (Google: `verification_url`).
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
    pub interval: Duration,
}

impl fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DeviceAuthorization {{ user_code: {:?}, verification_uri: {:?}, expires_in: {:?}, interval: {:?} }}",
            self.user_code, self.verification_uri, self.expires_in, self.interval
        )
    }
}

/// The body of a device authorization request.
pub fn device_request(client_id: &str, scope: &str) -> String {
    form_encode(&[("client_id", client_id), ("scope", scope)])
}

/// The body of a device-code token request (Google also wants the
/// client secret).
pub fn device_token_request(
    device_code: &str,
    client_id: &str,
    client_secret: Option<&str>,
) -> String {
    let mut pairs = vec![
        ("grant_type", DEVICE_CODE_GRANT),
        ("device_code", device_code),
        ("client_id", client_id),
    ];
    if let Some(secret) = client_secret {
        pairs.push(("client_secret", secret));
    }
    form_encode(&pairs)
}

/// What a device authorization endpoint's answer means. The user code
/// and URL are shown to the user, so they must be printable.
pub fn device_response(status: u16, body: &[u8]) -> Result<DeviceAuthorization, GrantError> {
    let object = success_object(status, body)?;
    let bad = |why: &str| GrantError::BadAnswer {
        status,
        why: why.into(),
    };
    let printable = |name: &str| object.str(name).filter(|s| token_ok(s)).map(str::to_string);
    let device_code = printable("device_code").ok_or_else(|| bad("no device_code"))?;
    let user_code = printable("user_code").ok_or_else(|| bad("no user_code"))?;
    let verification_uri = printable("verification_uri")
        .or_else(|| printable("verification_url"))
        .ok_or_else(|| bad("no verification_uri"))?;
    let interval = object
        .uint("interval")
        .map_or(DEFAULT_POLL_INTERVAL, Duration::from_secs)
        .clamp(Duration::from_secs(1), MAX_POLL_INTERVAL);
    Ok(DeviceAuthorization {
        device_code,
        user_code,
        verification_uri,
        verification_uri_complete: printable("verification_uri_complete"),
        expires_in: object
            .uint("expires_in")
            .map_or(DEFAULT_DEVICE_LIFETIME, |s| {
                Duration::from_secs(s.min(DEFAULT_DEVICE_LIFETIME.as_secs() * 4))
            }),
        interval,
    })
}

/// What to do after one device-code token poll (RFC 8628 §3.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Poll {
    /// The user has approved: the tokens.
    Done(Tokens),
    /// Ask again after this long (`authorization_pending`, or
    /// `slow_down` with the interval grown).
    Again(Duration),
    /// Give up: denied, expired, or an error that will not go away.
    Failed(GrantError),
}

/// The polling side of the device flow: the interval as it grows.
#[derive(Clone, Debug)]
pub struct DevicePoller {
    interval: Duration,
}

impl DevicePoller {
    pub fn new(auth: &DeviceAuthorization) -> DevicePoller {
        DevicePoller {
            interval: auth.interval,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// One answer of the token endpoint.
    pub fn handle_response(&mut self, status: u16, body: &[u8]) -> Poll {
        match token_response(status, body) {
            Ok(tokens) => Poll::Done(tokens),
            Err(e) => match e.code() {
                Some("authorization_pending") => Poll::Again(self.interval),
                Some("slow_down") => {
                    self.interval = (self.interval + SLOW_DOWN_STEP).min(MAX_POLL_INTERVAL);
                    Poll::Again(self.interval)
                }
                _ => Poll::Failed(e),
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_everything_but_unreserved() {
        assert_eq!(
            form_encode(&[("a b", "x+y&z=1%/é~._-"), ("k", "")]),
            "a%20b=x%2By%26z%3D1%25%2F%C3%A9~._-&k="
        );
        assert_eq!(
            refresh_request("1//0g-AB/c+d", "id.apps", Some("s&e=c")),
            "grant_type=refresh_token&refresh_token=1%2F%2F0g-AB%2Fc%2Bd\
             &client_id=id.apps&client_secret=s%26e%3Dc"
        );
        assert_eq!(
            refresh_request("r", "id", None),
            "grant_type=refresh_token&refresh_token=r&client_id=id"
        );
    }

    #[test]
    fn google_refresh_answer() {
        // https://developers.google.com/identity/protocols/oauth2/native-app#offline
        let body = br#"{
  "access_token": "ya29.a0AfB_byC-1x2y3z",
  "expires_in": 3599,
  "scope": "https://mail.google.com/",
  "token_type": "Bearer"
}"#;
        let t = token_response(200, body).unwrap();
        assert_eq!(t.access_token, "ya29.a0AfB_byC-1x2y3z");
        assert_eq!(t.expires_in, Some(Duration::from_secs(3599)));
        assert_eq!(t.refresh_token, None);
        assert_eq!(t.cache_for(), Duration::from_secs(3599 - 300));
        assert!(!format!("{t:?}").contains("ya29"));
    }

    #[test]
    fn microsoft_refresh_answer_rotates_the_refresh_token() {
        // https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-auth-code-flow#refresh-the-access-token
        let body = br#"{"token_type":"Bearer","scope":"https://outlook.office.com/SMTP.Send","expires_in":4339,"ext_expires_in":4339,"access_token":"eyJ0eXAiOiJKV1QiLCJub25jZSI6Ij.eyJhdWQi.sig","refresh_token":"0.AVYA-new_rt.AgABAAEAAAD"}"#;
        let t = token_response(200, body).unwrap();
        assert_eq!(
            t.access_token,
            "eyJ0eXAiOiJKV1QiLCJub25jZSI6Ij.eyJhdWQi.sig"
        );
        assert_eq!(
            t.refresh_token.as_deref(),
            Some("0.AVYA-new_rt.AgABAAEAAAD")
        );
        assert_eq!(t.expires_in, Some(Duration::from_secs(4339)));
        // Azure AD v1 sends numbers as strings.
        let t = token_response(
            200,
            br#"{"token_type":"Bearer","expires_in":"3599","access_token":"a"}"#,
        )
        .unwrap();
        assert_eq!(t.expires_in, Some(Duration::from_secs(3599)));
    }

    #[test]
    fn invalid_grant_answers() {
        // Google: a revoked or expired refresh token.
        let e = token_response(
            400,
            br#"{
  "error": "invalid_grant",
  "error_description": "Token has been expired or revoked."
}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), Some("invalid_grant"));
        assert_eq!(
            e.to_string(),
            "HTTP 400 error=invalid_grant error_description=\"Token has been expired or revoked.\""
        );
        // Microsoft: more members, one of them an array.
        let e = token_response(
            400,
            br#"{"error":"invalid_grant","error_description":"AADSTS70000: The provided value for the 'refresh_token' is not valid.\r\nTrace ID: 0000\r\nTimestamp: 2026-12-03 05:00:00Z","error_codes":[70000],"timestamp":"2026-12-03 05:00:00Z","trace_id":"0000","correlation_id":"1111","error_uri":"https://login.microsoftonline.com/error?code=70000","suberror":"bad_token"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), Some("invalid_grant"));
        let text = e.to_string();
        assert!(text.starts_with("HTTP 400 error=invalid_grant error_description=\"AADSTS70000: The provided value for the 'refresh_token' is not valid.\\x0d\\x0aTrace ID"), "{text}");
        // Google: a wrong client secret.
        let e = token_response(
            401,
            br#"{"error": "invalid_client", "error_description": "Unauthorized"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), Some("invalid_client"));
        assert!(e.to_string().starts_with("HTTP 401 error=invalid_client"));
    }

    #[test]
    fn non_json_and_unusable_answers() {
        let e = token_response(502, b"<html>Bad Gateway</html>").unwrap_err();
        assert_eq!(e.to_string(), "HTTP 502 (no OAuth2 error in the body)");
        let e = token_response(200, b"<html>").unwrap_err();
        assert!(e.to_string().contains("not a JSON object"), "{e}");
        let e = token_response(200, br#"{"token_type":"Bearer"}"#).unwrap_err();
        assert!(e.to_string().contains("no access_token"), "{e}");
        let e = token_response(200, br#"{"access_token":"a b"}"#).unwrap_err();
        assert!(e.to_string().contains("not a token"), "{e}");
        let e = token_response(200, br#"{"access_token":"a","token_type":"mac"}"#).unwrap_err();
        assert!(e.to_string().contains("Bearer"), "{e}");
        let e = token_response(200, br#"{"access_token":"a","refresh_token":"x\ny"}"#).unwrap_err();
        assert!(e.to_string().contains("refresh_token"), "{e}");
        // An error member in a 200 is an error.
        let e = token_response(200, br#"{"error":"invalid_grant"}"#).unwrap_err();
        assert_eq!(e.code(), Some("invalid_grant"));
        // Control characters and length in the description are tamed.
        let long = format!(
            r#"{{"error":"x\u001b[31m","error_description":"{}"}}"#,
            "d".repeat(1000)
        );
        let e = token_response(400, long.as_bytes()).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("error=x\\x1b[31m"), "{text}");
        assert!(text.len() < MAX_ERROR_TEXT + 100, "{}", text.len());
        assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)));
    }

    #[test]
    fn cache_time_keeps_a_margin() {
        let t = |s: Option<u64>| Tokens {
            access_token: "a".into(),
            expires_in: s.map(Duration::from_secs),
            refresh_token: None,
        };
        assert_eq!(t(Some(3600)).cache_for(), Duration::from_secs(3300));
        assert_eq!(t(Some(600)).cache_for(), Duration::from_secs(300));
        assert_eq!(t(Some(10)).cache_for(), MIN_CACHE);
        assert_eq!(t(Some(0)).cache_for(), MIN_CACHE);
        assert_eq!(t(None).cache_for(), DEFAULT_LIFETIME);
    }

    #[test]
    fn device_answers_of_google_and_microsoft() {
        // https://developers.google.com/identity/protocols/oauth2/limited-input-device#step-2:-handle-the-authorization-server-response
        let g = device_response(
            200,
            br#"{
  "device_code": "4/4-GMMhmHCXhWEzkobqIHGG_EnNYYsAkukHspeYUk9E8",
  "user_code": "GQVQ-JKEC",
  "verification_url": "https://www.google.com/device",
  "expires_in": 1800,
  "interval": 5
}"#,
        )
        .unwrap();
        assert_eq!(g.user_code, "GQVQ-JKEC");
        assert_eq!(g.verification_uri, "https://www.google.com/device");
        assert_eq!(g.interval, Duration::from_secs(5));
        assert_eq!(g.expires_in, Duration::from_secs(1800));
        // https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-device-code#device-authorization-response
        let m = device_response(
            200,
            br#"{"user_code":"FNJ8ZLJ3Q","device_code":"FAQABAAEAAAD--DLA3VO7QrddgJg7WevrPc","verification_uri":"https://microsoft.com/devicelogin","expires_in":900,"interval":5,"message":"To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code FNJ8ZLJ3Q to authenticate."}"#,
        )
        .unwrap();
        assert_eq!(m.verification_uri, "https://microsoft.com/devicelogin");
        assert_eq!(m.device_code, "FAQABAAEAAAD--DLA3VO7QrddgJg7WevrPc");
        let e = device_response(
            400,
            br#"{"error":"invalid_client","error_description":"AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'."}"#,
        )
        .unwrap_err();
        assert_eq!(e.code(), Some("invalid_client"));
        assert!(device_response(200, br#"{"device_code":"d","user_code":"u"}"#).is_err());
        assert!(device_response(
            200,
            br#"{"device_code":"d","user_code":"u\u001b","verification_uri":"v"}"#
        )
        .is_err());
    }

    #[test]
    fn device_polling_honours_pending_slow_down_and_expiry() {
        let auth = device_response(
            200,
            br#"{"device_code":"d","user_code":"u","verification_uri":"https://x/","interval":2}"#,
        )
        .unwrap();
        assert_eq!(auth.expires_in, DEFAULT_DEVICE_LIFETIME);
        let mut p = DevicePoller::new(&auth);
        // Google answers pending with 428, Microsoft with 400.
        assert_eq!(
            p.handle_response(
                428,
                br#"{"error":"authorization_pending","error_description":"Precondition Required"}"#
            ),
            Poll::Again(Duration::from_secs(2))
        );
        assert_eq!(
            p.handle_response(400, br#"{"error":"slow_down"}"#),
            Poll::Again(Duration::from_secs(7))
        );
        assert_eq!(
            p.handle_response(400, br#"{"error":"authorization_pending"}"#),
            Poll::Again(Duration::from_secs(7))
        );
        for _ in 0..20 {
            p.handle_response(400, br#"{"error":"slow_down"}"#);
        }
        assert_eq!(p.interval(), MAX_POLL_INTERVAL);
        let Poll::Failed(e) = p.handle_response(400, br#"{"error":"expired_token"}"#) else {
            panic!()
        };
        assert_eq!(e.code(), Some("expired_token"));
        assert!(matches!(
            p.handle_response(403, br#"{"error":"access_denied"}"#),
            Poll::Failed(_)
        ));
        let Poll::Done(t) = p.handle_response(
            200,
            br#"{"access_token":"a","refresh_token":"r","expires_in":3599,"token_type":"Bearer"}"#,
        ) else {
            panic!()
        };
        assert_eq!(t.refresh_token.as_deref(), Some("r"));
        assert_eq!(
            device_token_request("d/c", "id", Some("s")),
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=d%2Fc&client_id=id&client_secret=s"
        );
        assert_eq!(
            device_request("id", "https://outlook.office.com/SMTP.Send offline_access"),
            "client_id=id&scope=https%3A%2F%2Foutlook.office.com%2FSMTP.Send%20offline_access"
        );
    }
}
