//! The SASL initial responses of XOAUTH2 (Google's and Microsoft's
//! `user=...^Aauth=Bearer ...^A^A`) and OAUTHBEARER (RFC 7628 §3.1), and
//! the answer to their error challenge. The token is a secret: these
//! strings go to the wire only (the client logs them redacted).

use super::{base64_encode, Credentials};
use crate::routes::AuthMechanism;

/// The initial response (base64) of `mechanism` for the user and the
/// access token in `c.password`; `server`: the host name and port for
/// OAUTHBEARER's `host=` and `port=`.
pub fn initial_response(
    mechanism: AuthMechanism,
    c: &Credentials,
    server: Option<&(String, u16)>,
) -> String {
    let message = match mechanism {
        AuthMechanism::OAuthBearer => {
            let mut m = format!("n,a={},\x01", gs2_escape(&c.user));
            if let Some((host, port)) = server {
                m.push_str(&format!("host={host}\x01port={port}\x01"));
            }
            m.push_str(&format!("auth=Bearer {}\x01\x01", c.password));
            m
        }
        _ => format!("user={}\x01auth=Bearer {}\x01\x01", c.user, c.password),
    };
    base64_encode(message.as_bytes())
}

/// What the client answers to the 334 error challenge: XOAUTH2 an empty
/// line (Google's documentation), OAUTHBEARER a lone `%x01` (RFC 7628
/// §3.2.3), base64.
pub fn error_ack(mechanism: AuthMechanism) -> &'static str {
    match mechanism {
        AuthMechanism::OAuthBearer => "AQ==",
        _ => "",
    }
}

/// RFC 5801 saslname: `,` as `=2C`, `=` as `=3D`.
fn gs2_escape(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}
