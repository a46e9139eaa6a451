//! AUTH in the server session (RFC 4954): the SASL exchange line by line,
//! the credentials handed to the driver (`Event::Authenticate`), and its
//! verdict, with a growing delay after a failure (`AuthDelay`, a deadline).

use std::time::Instant;

use super::*;

impl ServerSession {
    pub(super) fn auth(&mut self, args: &str) {
        if !self.cfg.auth_available {
            return self.error(&reply::NOT_IMPLEMENTED);
        }
        if self.helo.is_none() {
            return self.error(&reply::NEED_HELO);
        }
        if self.auth_user.is_some() {
            return self.error(&reply::ALREADY_AUTHENTICATED);
        }
        if self.mail.is_some() {
            return self.error(&reply::AUTH_IN_TRANSACTION);
        }
        if !self.auth_offered() {
            return self.error(&reply::ENCRYPTION_REQUIRED);
        }
        match crate::auth::SaslServer::start(args) {
            Ok((sasl, step)) => {
                self.state = State::Auth(Box::new(sasl));
                self.auth_step(step);
            }
            Err(_) => self.error(&reply::AUTH_MECHANISM),
        }
    }

    pub(super) fn read_auth_line(&mut self, input: &[u8]) -> usize {
        let (chunk, complete) = match input.iter().position(|&b| b == b'\n') {
            Some(i) => (input.get(..=i).unwrap_or(input), true),
            None => (input, false),
        };
        if self.line.len() + chunk.len() > crate::auth::MAX_SASL_LINE {
            self.line_overflow = true;
            self.line.clear();
        } else if !self.line_overflow {
            self.line.extend_from_slice(chunk);
        }
        if complete {
            let line = std::mem::take(&mut self.line);
            let overflow = std::mem::replace(&mut self.line_overflow, false);
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let step = match &mut self.state {
                State::Auth(_) if overflow => crate::auth::SaslStep::Failed("line too long"),
                State::Auth(sasl) => sasl.step(text),
                _ => return chunk.len(),
            };
            self.auth_step(step);
        }
        chunk.len()
    }

    pub(super) fn auth_step(&mut self, step: crate::auth::SaslStep) {
        use crate::auth::SaslStep;
        match step {
            SaslStep::Challenge(c) => {
                self.out
                    .extend_from_slice(format!("334 {c}\r\n").as_bytes());
            }
            SaslStep::Done { user, password } => {
                self.state = State::AuthCheck { user: user.clone() };
                self.events
                    .push_back(Event::Authenticate(Credentials { user, password }));
            }
            SaslStep::Failed(why) => {
                log::debug!("auth: malformed exchange from {}: {why}", self.peer);
                self.state = State::Command;
                self.error(&reply::AUTH_SYNTAX);
            }
            SaslStep::Cancelled => {
                self.state = State::Command;
                self.reply(&reply::AUTH_CANCELLED);
            }
        }
    }

    /// The driver's answer to [`Event::Authenticate`].
    pub fn auth_verdict(&mut self, verdict: AuthVerdict, now: Instant) {
        let State::AuthCheck { user } = &mut self.state else {
            return;
        };
        let user = std::mem::take(user);
        self.deadline = now + self.cfg.timeout;
        match verdict {
            AuthVerdict::Ok => {
                log::info!("auth: {user} authenticated from {}", self.peer);
                self.state = State::Command;
                self.auth_user = Some(user);
                self.reply(&reply::AUTH_OK);
            }
            verdict => {
                self.auth_failures += 1;
                log::warn!(
                    "auth: failed for {user:?} from {} ({} on this connection)",
                    self.peer,
                    self.auth_failures
                );
                let reply = if verdict == AuthVerdict::Blocked {
                    reply::AUTH_BLOCKED
                } else {
                    reply::AUTH_FAILED
                };
                self.state = State::AuthDelay {
                    until: now + crate::auth::failure_delay(self.auth_failures),
                    reply,
                    close: self.auth_failures >= MAX_AUTH_FAILURES,
                };
            }
        }
    }
}
