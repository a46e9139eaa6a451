//! `tern oauth login`: the OAuth 2.0 device authorization grant (RFC 8628)
//! that gets the refresh token the daemon's refresh grant needs.
//!
//! The command POSTs to the provider's device endpoint, prints the
//! verification URL and the user code, and polls the token endpoint every
//! `interval` seconds (longer after `slow_down`, RFC 8628 §3.5) until the
//! user has approved, denied, or the code expired. The refresh token is
//! then written atomically, mode 0600 (`oauth::secret_file`). It blocks:
//! it is a command, run by hand, never by the daemon. HTTP goes through
//! the blocking driver (`http::blocking`) with the configuration's DNS
//! servers and trust anchors (`tls_ca_file`).
//!
//! Defaults come from the configuration (`smarthost_oauth_client_id`,
//! `smarthost_oauth_client_secret_file`,
//! `smarthost_oauth_refresh_token_file`, and the provider from
//! `smarthost_oauth_token_url`'s host); options override them.
//! `--device-url` and `--token-url` replace the provider's endpoints
//! (another tenant's, or a test server).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{EX_CANTCREAT, EX_CONFIG, EX_OK, EX_TEMPFAIL, EX_UNAVAILABLE, EX_USAGE};
use crate::config::Config;
use crate::http::{HttpRequest, Method, Url};
use crate::oauth::grant::{self, DevicePoller, Poll};

/// How long one HTTP request of the login may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Transport errors in a row while polling before the login gives up.
const MAX_POLL_ERRORS: u32 = 3;

const USAGE: &str = "\
usage: tern [-c FILE] oauth login [--provider google|microsoft] [--client-id ID]
           [--client-secret-file FILE] [--tenant TENANT] [--scope SCOPE]
           [--refresh-token-file FILE] [--device-url URL] [--token-url URL]
";

/// The login's settings, after the configuration and the options.
#[derive(Debug, PartialEq, Eq)]
struct Login {
    device_url: Url,
    token_url: Url,
    scope: String,
    client_id: String,
    client_secret_file: Option<PathBuf>,
    refresh_token_file: PathBuf,
}

/// `tern oauth SUBCOMMAND ...`.
pub fn main(cfg: Config, args: &[String]) -> i32 {
    match args.split_first() {
        Some((sub, rest)) if sub == "login" => match settings(&cfg, rest) {
            Ok(login) => run(&cfg, &login),
            Err(e) => {
                eprintln!("tern: oauth login: {e}\n{USAGE}");
                EX_USAGE
            }
        },
        _ => {
            eprint!("{USAGE}");
            EX_USAGE
        }
    }
}

fn settings(cfg: &Config, args: &[String]) -> Result<Login, String> {
    let mut provider = None;
    let mut client_id = cfg.smarthost_oauth_client_id.clone();
    let mut client_secret_file = cfg.smarthost_oauth_client_secret_file.clone();
    let mut refresh_token_file = cfg.smarthost_oauth_refresh_token_file.clone();
    let mut tenant = "common".to_string();
    let mut scope = None;
    let mut device_url = None;
    let mut token_url = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--provider" => provider = Some(value()?),
            "--client-id" => client_id = Some(value()?),
            "--client-secret-file" => client_secret_file = Some(PathBuf::from(value()?)),
            "--tenant" => tenant = value()?,
            "--scope" => scope = Some(value()?),
            "--refresh-token-file" => refresh_token_file = Some(PathBuf::from(value()?)),
            "--device-url" => device_url = Some(value()?),
            "--token-url" => token_url = Some(value()?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if tenant.is_empty()
        || !tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
    {
        return Err(format!(
            "--tenant {tenant:?}: letters, digits, '-', '.', '_' only"
        ));
    }
    // The provider: named, or read from the configured token endpoint.
    let provider = match provider.as_deref() {
        Some(p) => Some(p.to_ascii_lowercase()),
        None => cfg
            .smarthost_oauth_token_url
            .as_ref()
            .and_then(|u| match u.host.as_str() {
                "oauth2.googleapis.com" => Some("google".to_string()),
                "login.microsoftonline.com" => Some("microsoft".to_string()),
                _ => None,
            }),
    };
    let endpoints = match provider.as_deref() {
        Some("google") => Some(crate::oauth::google()),
        Some("microsoft") => Some(crate::oauth::microsoft(&tenant)),
        Some(other) => return Err(format!("--provider {other}: google or microsoft")),
        None => None,
    };
    let device_url = device_url
        .or_else(|| endpoints.as_ref().map(|e| e.device_url.clone()))
        .ok_or("name --provider google|microsoft (or --device-url and --token-url)")?;
    let token_url = match token_url {
        Some(u) => u,
        None => match (&endpoints, &cfg.smarthost_oauth_token_url) {
            (Some(e), _) => e.token_url.clone(),
            (None, Some(u)) => u.to_string(),
            (None, None) => return Err("name --provider or --token-url".into()),
        },
    };
    let scope = scope
        .or_else(|| endpoints.as_ref().map(|e| e.scope.to_string()))
        .ok_or("name --provider or --scope")?;
    let parse = |what: &str, u: &str| Url::parse(u).map_err(|e| format!("{what} {u:?}: {e}"));
    Ok(Login {
        device_url: parse("device URL", &device_url)?,
        token_url: parse("token URL", &token_url)?,
        scope,
        client_id: client_id
            .ok_or("no client ID: set smarthost_oauth_client_id or give --client-id")?,
        client_secret_file,
        refresh_token_file: refresh_token_file.ok_or(
            "no refresh token file: set smarthost_oauth_refresh_token_file or give --refresh-token-file",
        )?,
    })
}

fn post(cfg: &Config, url: &Url, body: String) -> Result<crate::http::HttpResponse, String> {
    let request = HttpRequest {
        method: Method::Post,
        url: url.clone(),
        headers: vec![
            (
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
            ("Accept".into(), "application/json".into()),
        ],
        body: body.into_bytes(),
    };
    crate::http::blocking::fetch_with_config(cfg, &request, REQUEST_TIMEOUT)
        .map_err(|e| format!("{url}: {e}"))
}

fn run(cfg: &Config, login: &Login) -> i32 {
    let secret = match &login.client_secret_file {
        Some(p) => match crate::system::read_secret_line(p) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("tern: oauth login: client secret file {}: {e}", p.display());
                return EX_CONFIG;
            }
        },
        None => None,
    };
    let response = match post(
        cfg,
        &login.device_url,
        grant::device_request(&login.client_id, &login.scope),
    ) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern: oauth login: device authorization: {e}");
            return EX_TEMPFAIL;
        }
    };
    let auth = match grant::device_response(response.status, &response.body) {
        Ok(a) => a,
        Err(e) => {
            let hint = match e.code() {
                // Google allows the device flow only for a list of scopes.
                Some("invalid_scope") => {
                    "\n(the provider does not allow this scope in the device flow: get the \
                     refresh token with another OAuth2 tool and put it in the refresh token \
                     file; the daemon's refresh grant works with any refresh token)"
                }
                _ => "",
            };
            eprintln!("tern: oauth login: device authorization refused: {e}{hint}");
            return EX_UNAVAILABLE;
        }
    };
    println!(
        "To allow tern to send mail, open {} and enter the code {}",
        auth.verification_uri, auth.user_code
    );
    if let Some(complete) = &auth.verification_uri_complete {
        println!("(or open {complete})");
    }
    println!(
        "Waiting for the approval (the code expires in {} minutes)...",
        auth.expires_in.as_secs().div_ceil(60)
    );
    let _ = std::io::stdout().flush();
    let expires = Instant::now() + auth.expires_in;
    let mut poller = DevicePoller::new(&auth);
    let mut wait = poller.interval();
    let mut errors = 0;
    loop {
        if Instant::now() + wait >= expires {
            eprintln!(
                "tern: oauth login: the code expired before it was approved; run the command again"
            );
            return EX_TEMPFAIL;
        }
        std::thread::sleep(wait);
        let body =
            grant::device_token_request(&auth.device_code, &login.client_id, secret.as_deref());
        let response = match post(cfg, &login.token_url, body) {
            Ok(r) => r,
            Err(e) if errors + 1 < MAX_POLL_ERRORS => {
                errors += 1;
                eprintln!("tern: oauth login: {e}; trying again");
                continue;
            }
            Err(e) => {
                eprintln!("tern: oauth login: {e}");
                return EX_TEMPFAIL;
            }
        };
        errors = 0;
        match poller.handle_response(response.status, &response.body) {
            Poll::Again(next) => wait = next,
            Poll::Failed(e) => {
                let why = match e.code() {
                    Some("expired_token") => " (the code expired; run the command again)",
                    Some("access_denied") => " (the request was denied)",
                    _ => "",
                };
                eprintln!("tern: oauth login: {e}{why}");
                // An expired code is worth another try; a refusal is not.
                return if e.code() == Some("expired_token") {
                    EX_TEMPFAIL
                } else {
                    EX_UNAVAILABLE
                };
            }
            Poll::Done(tokens) => return save(login, &tokens),
        }
    }
}

fn save(login: &Login, tokens: &grant::Tokens) -> i32 {
    let Some(refresh) = &tokens.refresh_token else {
        eprintln!(
            "tern: oauth login: the provider sent no refresh token (Microsoft needs the \
             offline_access scope)"
        );
        return EX_UNAVAILABLE;
    };
    let path = &login.refresh_token_file;
    match crate::oauth::secret_file::replace_secret_line(path, refresh) {
        Ok(()) => {
            println!("Refresh token written to {}", path.display());
            EX_OK
        }
        Err(e) => {
            eprintln!("tern: oauth login: cannot write {}: {e}", path.display());
            EX_CANTCREAT
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn provider_endpoints_and_config_defaults() {
        let cfg = Config::parse(
            "smarthost_oauth_client_id = cid\nsmarthost_oauth_refresh_token_file = /etc/tern/rt\n\
             smarthost_oauth_token_url = https://127.0.0.1/token\n\
             smarthost_auth = xoauth2\nsmarthost_user = me@example.com\n",
            "t",
        )
        .unwrap();
        let l = settings(&cfg, &args(&["--provider", "google"])).unwrap();
        assert_eq!(
            l.device_url.to_string(),
            "https://oauth2.googleapis.com/device/code"
        );
        assert_eq!(
            l.token_url.to_string(),
            "https://oauth2.googleapis.com/token"
        );
        assert_eq!(l.scope, "https://mail.google.com/");
        assert_eq!(l.client_id, "cid");
        assert_eq!(l.refresh_token_file, PathBuf::from("/etc/tern/rt"));
        let l = settings(
            &cfg,
            &args(&[
                "--provider",
                "Microsoft",
                "--tenant",
                "contoso.onmicrosoft.com",
                "--client-id",
                "x",
            ]),
        )
        .unwrap();
        assert_eq!(
            l.device_url.to_string(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/devicecode"
        );
        assert_eq!(
            l.token_url.to_string(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            l.scope,
            "https://outlook.office.com/SMTP.Send offline_access"
        );
        assert_eq!(l.client_id, "x");
        // Overrides for a test server.
        let l = settings(
            &cfg,
            &args(&[
                "--device-url",
                "https://127.0.0.1:9/device",
                "--token-url",
                "https://127.0.0.1:9/token",
                "--scope",
                "s",
                "--refresh-token-file",
                "/tmp/rt",
            ]),
        )
        .unwrap();
        assert_eq!(l.device_url.port, 9);
        assert_eq!(l.refresh_token_file, PathBuf::from("/tmp/rt"));
    }

    #[test]
    fn the_provider_is_read_from_the_configured_token_url() {
        let cfg = Config::parse(
            "smarthost_oauth_token_url = https://login.microsoftonline.com/common/oauth2/v2.0/token\n\
             smarthost_oauth_client_id = cid\nsmarthost_oauth_refresh_token_file = /rt\n\
             smarthost_auth = xoauth2\nsmarthost_user = me@example.com\n",
            "t",
        )
        .unwrap();
        let l = settings(&cfg, &[]).unwrap();
        assert!(l.device_url.path.ends_with("/devicecode"), "{l:?}");
    }

    #[test]
    fn errors_name_what_is_missing() {
        let cfg = Config::parse("", "t").unwrap();
        let e = settings(&cfg, &args(&["--provider", "google"])).unwrap_err();
        assert!(e.contains("--client-id"), "{e}");
        let e = settings(&cfg, &args(&["--provider", "google", "--client-id", "c"])).unwrap_err();
        assert!(e.contains("--refresh-token-file"), "{e}");
        let e = settings(&cfg, &args(&["--client-id", "c"])).unwrap_err();
        assert!(e.contains("--provider"), "{e}");
        let e = settings(&cfg, &args(&["--provider", "yahoo"])).unwrap_err();
        assert!(e.contains("google or microsoft"), "{e}");
        let e = settings(&cfg, &args(&["--tenant", "a/b", "--provider", "microsoft"])).unwrap_err();
        assert!(e.contains("--tenant"), "{e}");
        let e = settings(
            &cfg,
            &args(&[
                "--device-url",
                "http://x/d",
                "--token-url",
                "https://x/t",
                "--scope",
                "s",
                "--client-id",
                "c",
                "--refresh-token-file",
                "/r",
            ]),
        )
        .unwrap_err();
        assert!(e.contains("https://"), "{e}");
        assert!(settings(&cfg, &args(&["--client-id"]))
            .unwrap_err()
            .contains("needs a value"));
        assert!(settings(&cfg, &args(&["--bogus"]))
            .unwrap_err()
            .contains("unknown option"));
    }
}
