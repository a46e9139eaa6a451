//! Session set-up after EHLO: STARTTLS as the TLS policy says, then AUTH
//! with the mechanism the credentials and the server allow (OAuth2 when
//! the relay says so, else PLAIN, else LOGIN).

use std::time::Instant;

use super::own_replies::*;
use super::{base64_encode, oauth, synth, AuthMechanism, ClientSession, Expect, TlsPolicy};

impl ClientSession {
    pub(super) fn setup_tls(&mut self, now: Instant) {
        if !self.tls_active && !self.starttls_refused && self.cfg.tls != TlsPolicy::Never {
            if self.offers("STARTTLS") {
                self.send_command("STARTTLS", Expect::StartTls, now);
                return;
            }
            if self.cfg.tls == TlsPolicy::Required {
                self.fail_session(synth(TLS_NOT_OFFERED), true);
                return;
            }
        }
        self.setup_auth(now);
    }

    pub(super) fn setup_auth(&mut self, now: Instant) {
        if self.cfg.credentials.is_none() {
            self.become_ready();
            return;
        }
        if !self.tls_active && self.cfg.tls != TlsPolicy::Never {
            self.fail_session(synth(AUTH_NEEDS_TLS), true);
        } else if let Some(m) = self.auth_only.filter(|m| m.is_oauth()) {
            if !self.offers_auth(m.name()) {
                self.fail_session(synth(NO_AUTH_MECHANISM), true);
                return;
            }
            let response = match (&self.cfg.credentials, &self.server) {
                (Some(c), server) => oauth::initial_response(m, c, server.as_ref()),
                (None, _) => String::new(),
            };
            let command = format!("AUTH {} {response}", m.name());
            self.send_command(&command, Expect::AuthOAuth(m), now);
        } else if self.offers_auth("PLAIN") && self.may_use(AuthMechanism::Plain) {
            let command = format!("AUTH PLAIN {}", self.plain_response());
            self.send_command(&command, Expect::AuthPlain, now);
        } else if self.offers_auth("LOGIN") && self.may_use(AuthMechanism::Login) {
            self.send_command("AUTH LOGIN", Expect::AuthLoginUser, now);
        } else {
            self.fail_session(synth(NO_AUTH_MECHANISM), true);
        }
    }

    fn may_use(&self, mechanism: AuthMechanism) -> bool {
        self.auth_only.is_none_or(|only| only == mechanism)
    }

    /// RFC 4616: empty authzid, NUL, user, NUL, password.
    pub(super) fn plain_response(&self) -> String {
        let mut message = vec![0u8];
        if let Some(c) = &self.cfg.credentials {
            message.extend_from_slice(c.user.as_bytes());
            message.push(0);
            message.extend_from_slice(c.password.as_bytes());
        }
        base64_encode(&message)
    }
}
