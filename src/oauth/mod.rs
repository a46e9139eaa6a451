//! OAuth2 for XOAUTH2/OAUTHBEARER relays: where an access token comes
//! from ([`TokenSpec`], decided once when the configuration is read), the
//! token endpoint's requests and answers ([`grant`], [`json`]), and the
//! refresh token file ([`secret_file`]).
//!
//! Two sources, mutually exclusive per relay:
//! - a token command (`smarthost_oauth_token_command`, a route's
//!   `oauth_token_command=`): its first output line is the token;
//! - the built-in refresh-token grant (RFC 6749 §6):
//!   `smarthost_oauth_token_url`, `smarthost_oauth_client_id`,
//!   `smarthost_oauth_client_secret_file` (optional: public clients such
//!   as a Microsoft "mobile and desktop" registration have none) and
//!   `smarthost_oauth_refresh_token_file`.
//!
//! `daemon::oauth` runs either without blocking the loop and caches the
//! tokens; the SMTP client only ever sees a token.

pub mod grant;
pub mod json;
pub mod secret_file;

use std::path::PathBuf;

use crate::config::Config;
use crate::http::Url;

/// A token endpoint URL from the configuration: HTTPS only.
pub fn parse_token_url(v: &str) -> Result<Url, String> {
    Url::parse(v).map_err(|e| format!("{v:?}: {e}"))
}

/// Where a relay's access token comes from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TokenSpec {
    /// argv (split on spaces, no shell) of a command that prints it.
    Command(String),
    /// The refresh-token grant against a token endpoint.
    Refresh(RefreshGrant),
}

impl TokenSpec {
    /// For log lines: the command's program, or the token URL.
    pub fn describe(&self) -> String {
        match self {
            TokenSpec::Command(c) => format!("the token command {c:?}"),
            TokenSpec::Refresh(r) => format!("the token endpoint {}", r.token_url),
        }
    }
}

/// The settings of the refresh-token grant. The secrets stay in their
/// files (read at each refresh, so a new login needs no reload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshGrant {
    pub token_url: Url,
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    pub refresh_token_file: PathBuf,
}

impl std::hash::Hash for RefreshGrant {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (
            &self.token_url.host,
            self.token_url.port,
            &self.token_url.path,
        )
            .hash(state);
        self.client_id.hash(state);
        self.client_secret_file.hash(state);
        self.refresh_token_file.hash(state);
    }
}

impl RefreshGrant {
    /// The request body, from the secret files.
    pub fn request_body(&self) -> Result<String, String> {
        let refresh = crate::system::read_secret_line(&self.refresh_token_file).map_err(|e| {
            format!(
                "refresh token file {}: {e}",
                self.refresh_token_file.display()
            )
        })?;
        if refresh.is_empty() {
            return Err(format!(
                "refresh token file {} is empty (run `tern oauth login`)",
                self.refresh_token_file.display()
            ));
        }
        let secret = self.client_secret()?;
        Ok(grant::refresh_request(
            &refresh,
            &self.client_id,
            secret.as_deref(),
        ))
    }

    fn client_secret(&self) -> Result<Option<String>, String> {
        self.client_secret_file
            .as_ref()
            .map(|p| {
                crate::system::read_secret_line(p)
                    .map_err(|e| format!("client secret file {}: {e}", p.display()))
            })
            .transpose()
    }

    /// What `check-config` and start-up report: unreadable secret files.
    pub fn problems(&self, prefix: &str) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(e) = crate::system::read_secret_line(&self.refresh_token_file) {
            problems.push(format!(
                "{prefix}refresh_token_file {}: {e} (run `tern oauth login`)",
                self.refresh_token_file.display()
            ));
        }
        if let Some(p) = &self.client_secret_file {
            if let Err(e) = crate::system::read_secret_line(p) {
                problems.push(format!("{prefix}client_secret_file {}: {e}", p.display()));
            }
        }
        problems
    }
}

/// `Config` validation: where an XOAUTH2/OAUTHBEARER smarthost's token
/// comes from, a token command or the refresh-token grant, exactly one;
/// each problem names the key whose line it is reported on.
pub(crate) fn smarthost_source_problems(cfg: &Config, oauth: bool) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let grant_keys = [
        (
            "smarthost_oauth_token_url",
            cfg.smarthost_oauth_token_url.is_some(),
        ),
        (
            "smarthost_oauth_client_id",
            cfg.smarthost_oauth_client_id.is_some(),
        ),
        (
            "smarthost_oauth_refresh_token_file",
            cfg.smarthost_oauth_refresh_token_file.is_some(),
        ),
    ];
    let grant_set =
        grant_keys.iter().any(|(_, set)| *set) || cfg.smarthost_oauth_client_secret_file.is_some();
    let command = cfg.smarthost_oauth_token_command.is_some();
    if grant_set {
        for (key, set) in grant_keys {
            if !set {
                problems.push((
                    key,
                    format!("the refresh-token grant needs {key} (set smarthost_oauth_token_url, smarthost_oauth_client_id and smarthost_oauth_refresh_token_file)"),
                ));
            }
        }
    }
    match (oauth, command, grant_set) {
        (true, false, false) => problems.push((
            "smarthost_auth",
            "smarthost_auth = xoauth2|oauthbearer needs smarthost_oauth_token_command or \
             the refresh-token grant (smarthost_oauth_token_url, smarthost_oauth_client_id, \
             smarthost_oauth_refresh_token_file)"
                .into(),
        )),
        (_, true, true) => problems.push((
            "smarthost_oauth_token_command",
            "smarthost_oauth_token_command and the refresh-token grant \
             (smarthost_oauth_token_url, smarthost_oauth_client_id, \
             smarthost_oauth_client_secret_file, smarthost_oauth_refresh_token_file) \
             are mutually exclusive: set one"
                .into(),
        )),
        (false, true, _) => problems.push((
            "smarthost_oauth_token_command",
            "smarthost_oauth_token_command needs smarthost_auth = xoauth2|oauthbearer".into(),
        )),
        (false, false, true) => problems.push((
            "smarthost_oauth_token_url",
            "smarthost_oauth_token_url needs smarthost_auth = xoauth2|oauthbearer".into(),
        )),
        _ => {}
    }
    problems
}

/// A provider's device-flow endpoints and scope (`tern oauth login`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    pub device_url: String,
    pub token_url: String,
    pub scope: &'static str,
}

/// Google's endpoints (Gmail over SMTP needs the full-mail scope).
pub fn google() -> Provider {
    Provider {
        device_url: "https://oauth2.googleapis.com/device/code".into(),
        token_url: "https://oauth2.googleapis.com/token".into(),
        scope: "https://mail.google.com/",
    }
}

/// Microsoft identity platform v2 endpoints for `tenant` (`common`,
/// `organizations`, `consumers`, or a tenant ID or domain).
pub fn microsoft(tenant: &str) -> Provider {
    let base = format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0");
    Provider {
        device_url: format!("{base}/devicecode"),
        token_url: format!("{base}/token"),
        scope: "https://outlook.office.com/SMTP.Send offline_access",
    }
}
