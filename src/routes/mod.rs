//! Routes: the next hop per recipient domain and per sender (SPEC "Router
//! mail", key `routes`; Postfix's `transport_maps` and
//! `sender_dependent_relayhost_maps`, msmtp's per-account hosts).
//!
//! The file: one `MATCH TARGET [key=value ...]` per line, `#` comment lines
//! and blank lines ignored, first match wins:
//!
//! ```text
//! @example.com      smtp:mail.example.com:587 tls=starttls user=u password_file=/etc/tern/pw
//! .corp.example     smtp:10.0.0.5:25 tls=none          # subdomains of corp.example
//! from:@work.example smtp:smtp.work.example:465 tls=tls user=me@work.example password_file=/etc/tern/work
//! from:cron@router.lan mx
//! @lan.example      mx
//! @router.lan       local
//! *                 smtp:smtp.gmail.com:465 tls=tls user=me@gmail.com password_file=/etc/tern/gmail
//! ```
//!
//! MATCH: `@domain` (exactly that recipient domain), `.domain` (its
//! subdomains, not the domain itself), `from:ADDRESS` or `from:@domain`
//! (the envelope sender as received, before sender rewriting; the null
//! sender matches no `from:`), `*`. Domains and addresses match ASCII
//! case-insensitively. No match: the `smarthost` keys, else MX.
//!
//! TARGET: `smtp:HOST[:PORT]` (port 25 when omitted; keys `tls=starttls|tls|none`
//! (default `starttls`), `user=` with `password_file=` (an absolute path,
//! first line read at each delivery attempt; unreadable: the mail is
//! deferred), `auth=plain|login` (that mechanism only; default PLAIN, else
//! LOGIN, as offered)), `mx`, `local` (the recipient is delivered to the
//! local mailbox of its local part, aliases first, as if its domain were in
//! `local_domains`; decided when the message is received, so a recipient
//! queued as remote before the route existed goes out the default way).
//! `#` starts a comment anywhere on a line; a key appears once per line.
//!
//! Decided once, into types: the file becomes a [`RouteTable`] of
//! [`Route`]s with a [`Match`] and a [`Target`]; a remote target carries a
//! [`Relay`] (hosts, TLS mode, credential source, mechanism), which the
//! queue runner puts into the outbound job and which keys the connection
//! cache, so two routes to one host with different credentials never share
//! a session.
//!
//! `auth=xoauth2|oauthbearer` needs `user=`, no `password_file=`, and one
//! token source (`oauth::TokenSpec`, see `daemon::oauth`): either
//! `oauth_token_command=` (one word in a route line, as values hold no
//! spaces: a program, run without a shell; the first line of its output is
//! the access token) or the refresh-token grant `oauth_token_url=`
//! (https), `oauth_client_id=`, `oauth_refresh_token_file=` and optionally
//! `oauth_client_secret_file=` (absolute paths).
//!
//! `webhook:https://HOST[:PORT]/PATH` (key `format=ntfy|json`, default
//! `ntfy`): the Subject and first text/plain part are POSTed
//! (`delivery::webhook`); HTTPS only, the certificate verified with
//! `tls_ca_file` (else the system bundle).

use std::fmt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::oauth::{RefreshGrant, TokenSpec};

use crate::config::{Config, HostPort, SmarthostTls, SMTP_PORT};
use crate::smtp::address::{domain_name, Address};
use crate::smtp::client::Credentials;

/// Largest `routes` file read.
pub const MAX_ROUTES_FILE_BYTES: u64 = 1024 * 1024;

/// What a route line matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// `@example.com`: exactly this recipient domain (lower-case).
    Domain(String),
    /// `.example.com`: any subdomain of it (lower-case, without the dot).
    Subdomains(String),
    /// `from:me@example.com`: this envelope sender.
    Sender(Address),
    /// `from:@example.com`: any envelope sender in this domain.
    SenderDomain(String),
    /// `*`: anything.
    Any,
}

/// SASL mechanism a route asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthMechanism {
    Plain,
    Login,
    XOAuth2,
    OAuthBearer,
}

impl AuthMechanism {
    /// XOAUTH2 or OAUTHBEARER: an access token instead of a password.
    pub fn is_oauth(self) -> bool {
        matches!(self, AuthMechanism::XOAuth2 | AuthMechanism::OAuthBearer)
    }

    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            AuthMechanism::Plain => "PLAIN",
            AuthMechanism::Login => "LOGIN",
            AuthMechanism::XOAuth2 => "XOAUTH2",
            AuthMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// How to reach a relay: hosts in order, TLS mode, where the credentials
/// come from. Also the identity of a connection-cache entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Relay {
    pub hosts: Vec<HostPort>,
    pub tls: SmarthostTls,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// `None`: PLAIN or LOGIN, as offered.
    pub auth: Option<AuthMechanism>,
    /// Where the access token comes from (with `auth` XOAUTH2/OAUTHBEARER).
    pub oauth: Option<TokenSpec>,
}

impl Relay {
    /// The top-level `smarthost*` keys, when `smarthost` is set.
    pub fn smarthost(cfg: &Config) -> Option<Relay> {
        (!cfg.smarthost.is_empty()).then(|| Relay {
            hosts: cfg.smarthost.clone(),
            tls: cfg.smarthost_tls,
            user: cfg.smarthost_user.clone(),
            password_file: cfg.smarthost_password_file.clone(),
            auth: cfg.smarthost_auth,
            oauth: smarthost_token_spec(cfg),
        })
    }

    /// The user and the first line of the password file (read at each
    /// delivery attempt, so a changed password needs no reload).
    pub fn credentials(&self) -> Result<Option<Credentials>, String> {
        let (Some(user), Some(path)) = (&self.user, &self.password_file) else {
            return Ok(None);
        };
        crate::system::read_secret_line(path)
            .map(|password| {
                Some(Credentials {
                    user: user.clone(),
                    password,
                })
            })
            .map_err(|e| format!("password_file {}: {e}", path.display()))
    }

    /// Where an XOAUTH2/OAUTHBEARER relay's access token comes from: it
    /// stands in for the password.
    pub fn oauth_source(&self) -> Option<&TokenSpec> {
        self.auth.filter(|m| m.is_oauth()).and(self.oauth.as_ref())
    }

    /// The user and an access token as the credentials of an OAuth relay.
    pub fn oauth_credentials(&self, token: &str) -> Option<Credentials> {
        self.user.as_ref().map(|user| Credentials {
            user: user.clone(),
            password: token.to_string(),
        })
    }

    /// What of this relay tern cannot do yet (nothing: kept for the
    /// targets' common check).
    pub fn unsupported(&self) -> Option<&'static str> {
        None
    }
}

/// The smarthost keys' token source: the command, or the refresh-token
/// grant (the configuration's validation allows one, complete).
fn smarthost_token_spec(cfg: &Config) -> Option<TokenSpec> {
    if let Some(c) = &cfg.smarthost_oauth_token_command {
        return Some(TokenSpec::Command(c.clone()));
    }
    Some(TokenSpec::Refresh(RefreshGrant {
        token_url: cfg.smarthost_oauth_token_url.clone()?,
        client_id: cfg.smarthost_oauth_client_id.clone()?,
        client_secret_file: cfg.smarthost_oauth_client_secret_file.clone(),
        refresh_token_file: cfg.smarthost_oauth_refresh_token_file.clone()?,
    }))
}

/// The body format of a webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookFormat {
    Ntfy,
    Json,
}

/// Where matching recipients go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Smtp(Relay),
    Mx,
    Local,
    /// `webhook:https://…`: the message POSTed as a notification
    /// (`delivery::webhook`).
    Webhook {
        url: crate::http::Url,
        format: WebhookFormat,
    },
}

impl Target {
    /// Why tern cannot deliver through this target yet.
    pub fn unsupported(&self) -> Option<&'static str> {
        match self {
            Target::Smtp(relay) => relay.unsupported(),
            Target::Webhook { .. } | Target::Mx | Target::Local => None,
        }
    }
}

/// One line of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// 1-based line number, for logs.
    pub line: usize,
    pub matcher: Match,
    pub target: Target,
}

/// A line of the `routes` file that is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// The answer for one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteChoice<'a> {
    Route(&'a Route),
    /// No line matched: the `smarthost` keys, else MX.
    Default,
}

/// The parsed file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
}

/// The table as the daemon shares it (one load per start or SIGHUP).
pub type RouteMap = Rc<RouteTable>;

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> RouteTable {
        RouteTable { routes }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Parses the file's text: every line that parses (including targets
    /// not supported yet, kept so matching mail is deferred rather than
    /// sent another way), and every error.
    pub fn parse(text: &str) -> (RouteTable, Vec<RouteError>) {
        let mut routes = Vec::new();
        let mut errors = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split_once('#').map_or(raw, |(before, _)| before).trim();
            if content.is_empty() {
                continue;
            }
            match parse_line(content) {
                Ok((matcher, target)) => routes.push(Route {
                    line,
                    matcher,
                    target,
                }),
                Err(message) => errors.push(RouteError { line, message }),
            }
        }
        (RouteTable { routes }, errors)
    }

    /// The table of `cfg.routes` (read bounded). Problems are lines
    /// `FILE:LINE: message`, including targets not supported yet.
    pub fn load(cfg: &Config) -> (RouteTable, Vec<String>) {
        let Some(path) = &cfg.routes else {
            return (RouteTable::default(), Vec::new());
        };
        let text = match read_file(path) {
            Ok(text) => text,
            Err(e) => {
                return (
                    RouteTable::default(),
                    vec![format!("routes {}: {e}", path.display())],
                )
            }
        };
        let (table, errors) = RouteTable::parse(&text);
        let mut problems: Vec<String> = errors
            .into_iter()
            .map(|e| format!("{}:{}: {}", path.display(), e.line, e.message))
            .collect();
        for r in &table.routes {
            if let Some(why) = r.target.unsupported() {
                problems.push(format!("{}:{}: {why}", path.display(), r.line));
            }
        }
        (table, problems)
    }

    /// Loads and logs each problem (the daemon at start and on SIGHUP).
    pub fn load_logged(cfg: &Config) -> RouteMap {
        let (table, problems) = RouteTable::load(cfg);
        for p in problems {
            log::error!("{p}");
        }
        Rc::new(table)
    }

    /// The first route for a recipient domain and an envelope sender
    /// (`""`: the null sender).
    pub fn route_for(&self, sender: &str, rcpt_domain: &str) -> RouteChoice<'_> {
        let domain = rcpt_domain.strip_suffix('.').unwrap_or(rcpt_domain);
        let sender_domain = sender.rsplit_once('@').map(|(_, d)| d);
        let found = self.routes.iter().find(|r| match &r.matcher {
            Match::Domain(d) => domain.eq_ignore_ascii_case(d),
            Match::Subdomains(d) => is_subdomain(domain, d),
            Match::Sender(a) => sender.eq_ignore_ascii_case(&a.to_string()),
            Match::SenderDomain(d) => sender_domain.is_some_and(|s| s.eq_ignore_ascii_case(d)),
            Match::Any => true,
        });
        found.map_or(RouteChoice::Default, RouteChoice::Route)
    }

    /// The recipient is delivered on this host (a `local` route).
    pub fn is_local(&self, sender: &str, rcpt_domain: &str) -> bool {
        matches!(
            self.route_for(sender, rcpt_domain),
            RouteChoice::Route(Route {
                target: Target::Local,
                ..
            })
        )
    }
}

/// `check-config` and start-up: the `routes` file's problems, and its
/// password files that cannot be read.
pub fn startup_problems(cfg: &Config) -> Vec<String> {
    let (table, mut problems) = RouteTable::load(cfg);
    let path = cfg.routes.as_deref().unwrap_or(Path::new(""));
    for r in &table.routes {
        if let Target::Smtp(relay) = &r.target {
            if let Err(e) = relay.credentials() {
                problems.push(format!("{}:{}: {e}", path.display(), r.line));
            }
            if let Some(TokenSpec::Refresh(grant)) = relay.oauth_source() {
                for e in grant.problems("oauth_") {
                    problems.push(format!("{}:{}: {e}", path.display(), r.line));
                }
            }
        }
    }
    problems
}

/// Valid routes that are almost certainly not what was meant: port 465
/// (implicit TLS) in `tls=starttls` mode.
pub fn startup_warnings(cfg: &Config) -> Vec<String> {
    let (table, _) = RouteTable::load(cfg);
    let path = cfg.routes.as_deref().unwrap_or(Path::new(""));
    let mut warnings = Vec::new();
    for r in &table.routes {
        let Target::Smtp(relay) = &r.target else {
            continue;
        };
        for h in &relay.hosts {
            if h.port == 465 && relay.tls == SmarthostTls::StartTls {
                warnings.push(format!(
                    "{}:{}: smtp:{}:465 with tls=starttls: port 465 speaks implicit TLS, \
                     add tls=tls (else every delivery waits for a greeting that never comes)",
                    path.display(),
                    r.line,
                    h.host
                ));
            }
        }
    }
    warnings
}

/// `a.b.example` is a subdomain of `b.example`; `b.example` is not.
fn is_subdomain(domain: &str, parent: &str) -> bool {
    let (d, p) = (domain.as_bytes(), parent.as_bytes());
    d.len() > p.len() + 1
        && d.get(d.len() - p.len() - 1) == Some(&b'.')
        && d.get(d.len() - p.len()..)
            .is_some_and(|tail| tail.eq_ignore_ascii_case(p))
}

fn parse_line(content: &str) -> Result<(Match, Target), String> {
    let mut fields = content.split_whitespace();
    let (Some(matcher), Some(target)) = (fields.next(), fields.next()) else {
        return Err(format!(
            "expected `MATCH TARGET [key=value ...]`, got {content:?}"
        ));
    };
    let matcher = parse_match(matcher)?;
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for field in fields {
        let Some((k, v)) = field.split_once('=') else {
            return Err(format!("expected key=value, got {field:?}"));
        };
        if keys.iter().any(|(seen, _)| *seen == k) {
            return Err(format!("key {k} given twice"));
        }
        if v.is_empty() {
            return Err(format!("key {k} has no value"));
        }
        keys.push((k, v));
    }
    let target = parse_target(target, &keys)?;
    Ok((matcher, target))
}

fn parse_match(s: &str) -> Result<Match, String> {
    let domain = |d: &str| domain_name(d).ok_or_else(|| format!("bad domain {d:?} in {s:?}"));
    if s == "*" {
        Ok(Match::Any)
    } else if let Some(sender) = s.strip_prefix("from:") {
        match sender.strip_prefix('@') {
            Some(d) => domain(d).map(Match::SenderDomain),
            None => Address::parse_mailbox(sender)
                .map(Match::Sender)
                .map_err(|_| format!("bad sender address {sender:?} (user@domain or @domain)")),
        }
    } else if let Some(d) = s.strip_prefix('@') {
        domain(d).map(Match::Domain)
    } else if let Some(d) = s.strip_prefix('.') {
        domain(d).map(Match::Subdomains)
    } else {
        Err(format!(
            "bad match {s:?} (expected @domain, .domain, from:ADDRESS, from:@domain or *)"
        ))
    }
}

fn parse_target(s: &str, keys: &[(&str, &str)]) -> Result<Target, String> {
    let allow = |allowed: &[&str]| match keys.iter().find(|(k, _)| !allowed.contains(k)) {
        Some((k, _)) if allowed.is_empty() => Err(format!("target {s} takes no keys ({k}=)")),
        Some((k, _)) => Err(format!(
            "unknown key {k} for {s} (allowed: {})",
            allowed.join(", ")
        )),
        None => Ok(()),
    };
    let value = |key: &str| keys.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    if s == "mx" {
        allow(&[])?;
        return Ok(Target::Mx);
    }
    if s == "local" {
        allow(&[])?;
        return Ok(Target::Local);
    }
    if let Some(url) = s.strip_prefix("webhook:") {
        allow(&["format"])?;
        let url =
            crate::http::Url::parse(url).map_err(|e| format!("bad webhook URL {url:?}: {e}"))?;
        let format = match value("format") {
            None | Some("ntfy") => WebhookFormat::Ntfy,
            Some("json") => WebhookFormat::Json,
            Some(other) => return Err(format!("format={other}: expected ntfy or json")),
        };
        return Ok(Target::Webhook { url, format });
    }
    let Some(host) = s.strip_prefix("smtp:") else {
        return Err(format!(
            "bad target {s:?} (expected smtp:HOST:PORT, mx, local or webhook:URL)"
        ));
    };
    allow(&[
        "tls",
        "user",
        "password_file",
        "auth",
        "oauth_token_command",
        "oauth_token_url",
        "oauth_client_id",
        "oauth_client_secret_file",
        "oauth_refresh_token_file",
    ])?;
    let host = HostPort::parse(host, SMTP_PORT)?;
    let tls = match value("tls") {
        None | Some("starttls") => SmarthostTls::StartTls,
        Some("tls") => SmarthostTls::Tls,
        Some("none") => SmarthostTls::None,
        Some(other) => return Err(format!("tls={other}: expected starttls, tls or none")),
    };
    let auth = match value("auth") {
        None => None,
        Some("plain") => Some(AuthMechanism::Plain),
        Some("login") => Some(AuthMechanism::Login),
        Some("xoauth2") => Some(AuthMechanism::XOAuth2),
        Some("oauthbearer") => Some(AuthMechanism::OAuthBearer),
        Some(other) => {
            return Err(format!(
                "auth={other}: expected plain, login, xoauth2 or oauthbearer"
            ))
        }
    };
    let password_file = value("password_file").map(PathBuf::from);
    if let Some(p) = &password_file {
        if !p.is_absolute() {
            return Err(format!(
                "password_file={}: must be an absolute path",
                p.display()
            ));
        }
    }
    let user = value("user").map(str::to_string);
    let oauth = matches!(
        auth,
        Some(AuthMechanism::XOAuth2 | AuthMechanism::OAuthBearer)
    );
    match (&user, &password_file) {
        (None, Some(_)) => return Err("password_file= needs user=".into()),
        (Some(_), None) if !oauth => return Err("user= needs password_file=".into()),
        (None, None) if auth.is_some() => return Err("auth= needs user=".into()),
        (_, Some(_)) if oauth => {
            return Err("password_file= is not used with auth=xoauth2|oauthbearer".into())
        }
        _ => {}
    }
    let token = route_token_spec(&value)?;
    match (oauth, &token) {
        (true, None) => {
            return Err(
                "auth=xoauth2|oauthbearer needs oauth_token_command= or oauth_token_url=, \
                 oauth_client_id= and oauth_refresh_token_file="
                    .into(),
            )
        }
        (false, Some(TokenSpec::Command(_))) => {
            return Err("oauth_token_command= needs auth=xoauth2 or auth=oauthbearer".into())
        }
        (false, Some(TokenSpec::Refresh(_))) => {
            return Err("oauth_token_url= needs auth=xoauth2 or auth=oauthbearer".into())
        }
        _ => {}
    }
    Ok(Target::Smtp(Relay {
        hosts: vec![host],
        tls,
        user,
        password_file,
        auth,
        oauth: token,
    }))
}

/// A route's `oauth_token_command=`, or its refresh-token grant
/// (`oauth_token_url=`, `oauth_client_id=`, `oauth_refresh_token_file=`,
/// optionally `oauth_client_secret_file=`), never both.
fn route_token_spec<'a>(
    value: &impl Fn(&str) -> Option<&'a str>,
) -> Result<Option<TokenSpec>, String> {
    let grant_keys = [
        "oauth_token_url",
        "oauth_client_id",
        "oauth_client_secret_file",
        "oauth_refresh_token_file",
    ];
    let grant_set = grant_keys.iter().any(|k| value(k).is_some());
    let path = |key: &str| -> Result<Option<PathBuf>, String> {
        match value(key).map(PathBuf::from) {
            Some(p) if !p.is_absolute() => {
                Err(format!("{key}={}: must be an absolute path", p.display()))
            }
            p => Ok(p),
        }
    };
    match (value("oauth_token_command"), grant_set) {
        (Some(_), true) => Err(
            "oauth_token_command= and oauth_token_url=/oauth_client_id=/oauth_client_secret_file=/\
             oauth_refresh_token_file= are mutually exclusive: set one"
                .into(),
        ),
        (Some(c), false) if c.split(' ').all(str::is_empty) => {
            Err("oauth_token_command= is empty".into())
        }
        (Some(c), false) => Ok(Some(TokenSpec::Command(c.to_string()))),
        (None, false) => Ok(None),
        (None, true) => {
            let missing = |key: &str| format!("the refresh-token grant needs {key}=");
            let token_url = value("oauth_token_url").ok_or_else(|| missing("oauth_token_url"))?;
            Ok(Some(TokenSpec::Refresh(RefreshGrant {
                token_url: crate::oauth::parse_token_url(token_url)
                    .map_err(|e| format!("oauth_token_url={e}"))?,
                client_id: value("oauth_client_id")
                    .ok_or_else(|| missing("oauth_client_id"))?
                    .to_string(),
                client_secret_file: path("oauth_client_secret_file")?,
                refresh_token_file: path("oauth_refresh_token_file")?
                    .ok_or_else(|| missing("oauth_refresh_token_file"))?,
            })))
        }
    }
}

fn read_file(path: &Path) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    let bytes = crate::system::read_bounded(file, MAX_ROUTES_FILE_BYTES)?;
    String::from_utf8(bytes)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests;
