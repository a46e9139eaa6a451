//! OAuth2 access tokens for XOAUTH2 and OAUTHBEARER, from either source of
//! a `TokenSpec`: a token command (`smarthost_oauth_token_command`, a
//! route's `oauth_token_command=`) or the refresh-token grant
//! (`smarthost_oauth_token_url` ..., a route's `oauth_token_url=` ...).
//!
//! The refresh grant is an HTTPS POST (RFC 6749 §6) that [`TokenSource`]
//! hands out as an `HttpRequest` ([`TokenSource::take_requests`]); the
//! daemon's HTTP driver runs it in the loop and gives the result back
//! ([`TokenSource::handle_http`]). The access token is used until its
//! `expires_in` less `grant::EXPIRY_MARGIN` (so it is refreshed before it
//! expires); a new refresh token in the answer replaces the refresh token
//! file atomically (`oauth::secret_file`). A failure (endpoint down,
//! `invalid_grant`) leaves the job deferred (4.7.0) with the HTTP status
//! and the provider's `error`/`error_description` in the log and the
//! reason; the next attempt tries again.
//!
//! The command runs without a shell (argv split on spaces), stdin and
//! stderr on /dev/null, stdout a non-blocking pipe registered in the
//! reactor; the loop never waits for it. At most [`TOKEN_OUTPUT_MAX`]
//! bytes are kept, the command gets [`TOKEN_COMMAND_DEADLINE`] (then it is
//! killed), and it is reaped with `waitpid(WNOHANG)` (`try_wait`) at each
//! wakeup and tick until it has exited (no zombies). Its first output line
//! is the token, used for [`TOKEN_LIFETIME`] or until a server refuses it
//! ([`TokenSource::forget`]).
//!
//! [`TokenOutput`] decides what the bytes and the exit status mean
//! (sans-IO); [`TokenSource`] runs the commands and caches the tokens.

use std::collections::HashMap;
use std::io::Read as _;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::http::{HttpError, HttpRequest, HttpResponse, Method};
use crate::oauth::{grant, secret_file, RefreshGrant, TokenSpec};
use crate::reactor::{Reactor, SockId};

/// Output of a token command kept (a token is a few KiB at most).
pub const TOKEN_OUTPUT_MAX: usize = 8 * 1024;
/// How long a token command may run before it is killed.
pub const TOKEN_COMMAND_DEADLINE: Duration = Duration::from_secs(30);
/// How long a token is reused: Google's and Microsoft's access tokens live
/// 60 minutes.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(45 * 60);
/// Bytes read from the pipe per read call.
const READ_CHUNK: usize = 1024;
/// How long a token endpoint may take to answer (connect, TLS, response).
pub const REFRESH_DEADLINE: Duration = Duration::from_secs(30);

/// The output of one run, bounded.
#[derive(Default)]
pub struct TokenOutput {
    bytes: Vec<u8>,
    /// More than [`TOKEN_OUTPUT_MAX`] bytes came (the rest was dropped).
    overflow: bool,
}

impl std::fmt::Debug for TokenOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenOutput {{ {} bytes, <hidden> }}", self.bytes.len())
    }
}

impl TokenOutput {
    /// Bytes read from the command's stdout.
    pub fn push(&mut self, bytes: &[u8]) {
        let room = TOKEN_OUTPUT_MAX.saturating_sub(self.bytes.len());
        let take = bytes.get(..room.min(bytes.len())).unwrap_or_default();
        self.bytes.extend_from_slice(take);
        if take.len() < bytes.len() {
            self.overflow = true;
        }
    }

    /// The token, or why there is none (words for the log and the
    /// deferral reason; never the output itself, which may be a secret).
    /// `status`: `None` when the command was killed at the deadline.
    pub fn result(&self, status: Option<ExitStatus>) -> Result<String, String> {
        let Some(status) = status else {
            return Err(format!(
                "the token command did not finish within {} s and was killed",
                TOKEN_COMMAND_DEADLINE.as_secs()
            ));
        };
        if !status.success() {
            return Err(format!("the token command failed ({status})"));
        }
        let first = self.bytes.split(|&b| b == b'\n').next().unwrap_or_default();
        let first = first.strip_suffix(b"\r").unwrap_or(first);
        if first.len() == self.bytes.len() && self.overflow {
            return Err(format!(
                "the token command's first line is longer than {TOKEN_OUTPUT_MAX} bytes"
            ));
        }
        if first.is_empty() {
            return Err("the token command printed no token".into());
        }
        // RFC 6750 b64token characters, and more: any visible ASCII.
        if !first.iter().all(|b| b.is_ascii_graphic()) {
            return Err(
                "the token command's first line is not a token (spaces or control characters)"
                    .into(),
            );
        }
        Ok(String::from_utf8_lossy(first).into_owned())
    }
}

/// A command's argv: split on spaces, no shell, no quoting.
pub fn argv(command: &str) -> Vec<&str> {
    command.split(' ').filter(|w| !w.is_empty()).collect()
}

struct Running {
    child: Child,
    /// The stdout pipe until its end.
    pipe: Option<SockId>,
    output: TokenOutput,
    deadline: Instant,
}

struct Cached {
    token: String,
    /// Used until then.
    until: Instant,
}

/// An HTTP request for the daemon's HTTP driver: the id comes back with
/// its result.
pub type RequestId = u64;

/// Runs token commands and refresh grants and caches their tokens, per
/// [`TokenSpec`].
#[derive(Default)]
pub struct TokenSource {
    cache: HashMap<TokenSpec, Cached>,
    running: HashMap<String, Running>,
    /// Refresh grants in flight, by request.
    refreshing: HashMap<RequestId, RefreshGrant>,
    /// Requests not handed to the HTTP driver yet.
    outgoing: Vec<(RequestId, HttpRequest)>,
    request_seq: RequestId,
    /// Killed or finished children not reaped yet.
    reaping: Vec<Child>,
    /// Results of this call: the source and its token or why none.
    done: Vec<(TokenSpec, Result<String, String>)>,
}

impl TokenSource {
    /// A cached token still in its time.
    pub fn get(&mut self, spec: &TokenSpec, now: Instant) -> Option<String> {
        match self.cache.get(spec) {
            Some(c) if now < c.until => Some(c.token.clone()),
            Some(_) => {
                self.cache.remove(spec);
                None
            }
            None => None,
        }
    }

    /// A server refused the token: the next delivery fetches a new one.
    pub fn forget(&mut self, spec: &TokenSpec) {
        if self.cache.remove(spec).is_some() {
            log::info!(
                "OAuth2 token from {} refused by the server; fetching a new one next time",
                spec.describe()
            );
        }
    }

    /// Starts fetching a token for `spec` unless that runs already; the
    /// result comes from [`TokenSource::take_done`]. `Err`: it could not
    /// be started (the command cannot run, a secret file is unreadable).
    pub fn start<K: Ord + Copy>(
        &mut self,
        reactor: &mut Reactor<K>,
        spec: &TokenSpec,
        now: Instant,
    ) -> Result<(), String> {
        match spec {
            TokenSpec::Command(command) => self.start_command(reactor, command, now),
            TokenSpec::Refresh(g) => self.start_refresh(g),
        }
    }

    fn start_refresh(&mut self, g: &RefreshGrant) -> Result<(), String> {
        if self.refreshing.values().any(|r| r == g) {
            return Ok(());
        }
        let request = refresh_request(g)?;
        self.request_seq += 1;
        let id = self.request_seq;
        log::debug!("refreshing the OAuth2 access token at {}", g.token_url);
        self.refreshing.insert(id, g.clone());
        self.outgoing.push((id, request));
        Ok(())
    }

    /// Requests for the HTTP driver (each with [`REFRESH_DEADLINE`]).
    pub fn take_requests(&mut self) -> Vec<(RequestId, HttpRequest)> {
        std::mem::take(&mut self.outgoing)
    }

    /// The HTTP driver's result for a request: the token cached (and a
    /// rotated refresh token written), or why there is none.
    pub fn handle_http(
        &mut self,
        id: RequestId,
        result: Result<HttpResponse, HttpError>,
        now: Instant,
    ) {
        let Some(g) = self.refreshing.remove(&id) else {
            return;
        };
        let result = refresh_result(&g, result);
        let spec = TokenSpec::Refresh(g);
        match &result {
            Ok((token, until)) => {
                self.cache.insert(
                    spec.clone(),
                    Cached {
                        token: token.clone(),
                        until: now + *until,
                    },
                );
            }
            Err(e) => log::error!("OAuth2 refresh: {e}"),
        }
        self.done.push((spec, result.map(|(t, _)| t)));
    }

    fn start_command<K: Ord + Copy>(
        &mut self,
        reactor: &mut Reactor<K>,
        command: &str,
        now: Instant,
    ) -> Result<(), String> {
        if self.running.contains_key(command) {
            return Ok(());
        }
        let mut child = spawn(command)?;
        let registered = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout pipe"))
            .and_then(|out| {
                let receiver = mio::unix::pipe::Receiver::from(out);
                receiver.set_nonblocking(true)?;
                reactor.register_pipe(receiver)
            });
        let pipe = match registered {
            Ok(p) => p,
            Err(e) => {
                let _ = child.kill();
                self.reaping.push(child);
                return Err(format!("token command pipe: {e}"));
            }
        };
        log::debug!("running the OAuth2 token command {command:?}");
        self.running.insert(
            command.to_string(),
            Running {
                child,
                pipe: Some(pipe),
                output: TokenOutput::default(),
                deadline: now + TOKEN_COMMAND_DEADLINE,
            },
        );
        Ok(())
    }

    /// Whether `sock` is the pipe of a running command.
    pub fn owns(&self, sock: SockId) -> bool {
        self.running.values().any(|r| r.pipe == Some(sock))
    }

    /// Readiness on a command's pipe: read it, and finish the command if
    /// it has ended.
    pub fn handle_ready<K: Ord + Copy>(&mut self, reactor: &mut Reactor<K>, sock: SockId) {
        let command = self
            .running
            .iter()
            .find(|(_, r)| r.pipe == Some(sock))
            .map(|(c, _)| c.clone());
        if let Some(command) = command {
            self.advance(reactor, &command, Instant::now());
        }
    }

    /// At each tick: deadlines, exits after the pipe's end, reaping.
    pub fn sweep<K: Ord + Copy>(&mut self, reactor: &mut Reactor<K>, now: Instant) {
        let commands: Vec<String> = self.running.keys().cloned().collect();
        for command in commands {
            self.advance(reactor, &command, now);
        }
        self.reaping
            .retain_mut(|child| !matches!(child.try_wait(), Ok(Some(_)) | Err(_)));
    }

    /// At shutdown: running commands are killed (their results would
    /// start no delivery); the pipes go with the reactor.
    pub fn shutdown(&mut self) {
        for (_, mut r) in self.running.drain() {
            let _ = r.child.kill();
            let _ = r.child.try_wait();
        }
    }

    /// Results since the last call.
    pub fn take_done(&mut self) -> Vec<(TokenSpec, Result<String, String>)> {
        std::mem::take(&mut self.done)
    }

    /// Commands running (or not reaped yet).
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.reaping.is_empty() && self.refreshing.is_empty()
    }

    fn advance<K: Ord + Copy>(&mut self, reactor: &mut Reactor<K>, command: &str, now: Instant) {
        let Some(r) = self.running.get_mut(command) else {
            return;
        };
        if let Some(pipe) = r.pipe {
            let mut buf = [0u8; READ_CHUNK];
            loop {
                match reactor.read(pipe, &mut buf) {
                    Ok(0) => {
                        reactor.close(pipe);
                        r.pipe = None;
                        break;
                    }
                    Ok(n) => r.output.push(buf.get(..n).unwrap_or_default()),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        reactor.close(pipe);
                        r.pipe = None;
                        break;
                    }
                }
            }
        }
        let status = if r.pipe.is_none() {
            r.child.try_wait().ok().flatten()
        } else {
            None
        };
        let result = match status {
            Some(status) => r.output.result(Some(status)),
            None if now >= r.deadline => r.output.result(None),
            None => return,
        };
        let Some(mut r) = self.running.remove(command) else {
            return;
        };
        if let Some(pipe) = r.pipe.take() {
            reactor.close(pipe);
        }
        if status.is_none() {
            let _ = r.child.kill();
            self.reaping.push(r.child);
        }
        match &result {
            Ok(token) => {
                log::info!("OAuth2 token obtained from {:?}", argv(command).first());
                self.cache.insert(
                    TokenSpec::Command(command.to_string()),
                    Cached {
                        token: token.clone(),
                        until: now + TOKEN_LIFETIME,
                    },
                );
            }
            Err(e) => log::error!("OAuth2 token command {command:?}: {e}"),
        }
        self.done
            .push((TokenSpec::Command(command.to_string()), result));
    }
}

/// The POST of a refresh grant, its body from the secret files.
pub fn refresh_request(g: &RefreshGrant) -> Result<HttpRequest, String> {
    Ok(HttpRequest {
        method: Method::Post,
        url: g.token_url.clone(),
        headers: vec![
            (
                "Content-Type".into(),
                "application/x-www-form-urlencoded".into(),
            ),
            ("Accept".into(), "application/json".into()),
        ],
        body: g.request_body()?.into_bytes(),
    })
}

/// What a refresh grant's HTTP result means: the access token and how
/// long to use it, or why there is none (in words for the log and the
/// deferral reason). A rotated refresh token is written to its file
/// here; if that fails the access token is still used (the old refresh
/// token may work again, and the log says what to fix).
pub fn refresh_result(
    g: &RefreshGrant,
    result: Result<HttpResponse, HttpError>,
) -> Result<(String, Duration), String> {
    let url = &g.token_url;
    let response = result.map_err(|e| format!("token endpoint {url}: {e}"))?;
    let tokens = grant::token_response(response.status, &response.body).map_err(|e| {
        let hint = match e.code() {
            Some("invalid_grant") => {
                " (the refresh token was revoked or expired: run `tern oauth login`)"
            }
            _ => "",
        };
        format!("token endpoint {url} refused the refresh: {e}{hint}")
    })?;
    if let Some(new) = &tokens.refresh_token {
        let current = crate::system::read_secret_line(&g.refresh_token_file).ok();
        if current.as_deref() != Some(new.as_str()) {
            let path = &g.refresh_token_file;
            match secret_file::replace_secret_line(path, new) {
                Ok(()) => log::info!(
                    "OAuth2 refresh token rotated by {url}; written to {}",
                    path.display()
                ),
                Err(e) => log::error!(
                    "OAuth2 refresh token rotated by {url} but {} cannot be written: {e}",
                    path.display()
                ),
            }
        }
    }
    log::info!(
        "OAuth2 token obtained from {url} (expires_in {})",
        tokens
            .expires_in
            .map_or("unknown".into(), |d| format!("{} s", d.as_secs()))
    );
    Ok((tokens.access_token.clone(), tokens.cache_for()))
}

/// Starts the command: argv split on spaces, no shell, stdin and stderr
/// on /dev/null, stdout a pipe.
fn spawn(command: &str) -> Result<Child, String> {
    let args = argv(command);
    let Some((program, rest)) = args.split_first() else {
        return Err("the token command is empty".into());
    };
    Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run the token command {program}: {e}"))
}

/// A token from `spec`, blocking (for `tern test`, a command that may
/// block): the token command, or the refresh grant through the blocking
/// HTTP driver (a rotated refresh token is written, as the daemon does).
pub fn fetch_blocking_spec(
    cfg: &crate::config::Config,
    spec: &TokenSpec,
) -> Result<String, String> {
    match spec {
        TokenSpec::Command(command) => fetch_blocking(command),
        TokenSpec::Refresh(g) => {
            let request = refresh_request(g)?;
            let result = crate::http::blocking::fetch_with_config(cfg, &request, REFRESH_DEADLINE);
            refresh_result(g, result).map(|(token, _)| token)
        }
    }
}

/// Runs `command` to its end, blocking (for `tern test`, a command that
/// may block), with the daemon's limits: [`TOKEN_OUTPUT_MAX`] octets kept,
/// killed after [`TOKEN_COMMAND_DEADLINE`].
pub fn fetch_blocking(command: &str) -> Result<String, String> {
    fetch_blocking_within(command, TOKEN_COMMAND_DEADLINE)
}

fn fetch_blocking_within(command: &str, limit: Duration) -> Result<String, String> {
    use std::os::fd::AsRawFd;
    let mut child = spawn(command)?;
    let deadline = Instant::now() + limit;
    let mut output = TokenOutput::default();
    if let Some(mut out) = child.stdout.take() {
        let mut buf = [0u8; READ_CHUNK];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: out.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
            if ready < 0 {
                continue; // EINTR: the deadline is checked again
            }
            if ready == 0 {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "the token command did not finish within {} ms; killed",
                    limit.as_millis()
                ));
            }
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => output.push(buf.get(..n).unwrap_or_default()),
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    output.result(Some(status))
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;

    fn ok() -> Option<ExitStatus> {
        Some(ExitStatus::from_raw(0))
    }

    #[test]
    fn blocking_fetch_kills_a_command_past_its_deadline() {
        let t0 = Instant::now();
        let e = fetch_blocking_within("/bin/sleep 5", Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("did not finish") && e.contains("killed"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        let tok = fetch_blocking_within("/bin/echo ya29.tok", Duration::from_secs(5));
        assert_eq!(tok.unwrap(), "ya29.tok");
    }

    #[test]
    fn first_line_is_the_token() {
        let mut o = TokenOutput::default();
        o.push(b"ya29.a0Af");
        o.push(b"-x_y\r\nsecond line\n");
        assert_eq!(o.result(ok()).unwrap(), "ya29.a0Af-x_y");
        let mut o = TokenOutput::default();
        o.push(b"tok");
        assert_eq!(o.result(ok()).unwrap(), "tok");
    }

    #[test]
    fn failures_in_words_without_the_output() {
        let mut o = TokenOutput::default();
        o.push(b"secret\n");
        let e = o.result(Some(ExitStatus::from_raw(1 << 8))).unwrap_err();
        assert!(e.contains("failed") && e.contains("exit status: 1"), "{e}");
        assert!(!e.contains("secret"));
        let e = o.result(None).unwrap_err();
        assert!(e.contains("30 s") && e.contains("killed"), "{e}");
        let e = TokenOutput::default().result(ok()).unwrap_err();
        assert!(e.contains("no token"), "{e}");
        let mut o = TokenOutput::default();
        o.push(b"two words\n");
        assert!(o.result(ok()).unwrap_err().contains("not a token"));
        assert_eq!(format!("{o:?}"), "TokenOutput { 10 bytes, <hidden> }");
    }

    #[test]
    fn output_is_bounded() {
        let mut o = TokenOutput::default();
        o.push(&vec![b'a'; TOKEN_OUTPUT_MAX - 1]);
        o.push(b"bcd");
        assert_eq!(o.bytes.len(), TOKEN_OUTPUT_MAX);
        assert!(o.result(ok()).unwrap_err().contains("longer than"));
        // A short first line, then too much: the token stands.
        let mut o = TokenOutput::default();
        o.push(b"tok\n");
        o.push(&vec![b'x'; TOKEN_OUTPUT_MAX]);
        assert_eq!(o.result(ok()).unwrap(), "tok");
    }

    #[test]
    fn argv_splits_on_spaces_without_a_shell() {
        assert_eq!(
            argv("/usr/bin/oauth2 --user  me@x.example 'q'"),
            vec!["/usr/bin/oauth2", "--user", "me@x.example", "'q'"]
        );
        assert!(argv("  ").is_empty());
    }

    #[test]
    fn runs_caches_and_forgets() {
        let mut reactor: Reactor<u8> = Reactor::new().unwrap();
        let mut src = TokenSource::default();
        let t0 = Instant::now();
        let cmd = &TokenSpec::Command("/bin/echo tok123".into());
        assert_eq!(src.get(cmd, t0), None);
        src.start(&mut reactor, cmd, t0).unwrap();
        let mut done = Vec::new();
        for _ in 0..500 {
            src.sweep(&mut reactor, Instant::now());
            done = src.take_done();
            if !done.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(done, vec![(cmd.clone(), Ok("tok123".to_string()))]);
        let now = Instant::now();
        assert_eq!(src.get(cmd, now).as_deref(), Some("tok123"));
        assert_eq!(src.get(cmd, now + TOKEN_LIFETIME), None);
        src.start(&mut reactor, &TokenSpec::Command("/bin/false".into()), t0)
            .unwrap();
        let mut done = Vec::new();
        for _ in 0..500 {
            src.sweep(&mut reactor, Instant::now());
            done = src.take_done();
            if !done.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(done[0].1.as_ref().unwrap_err().contains("exit status: 1"));
        assert!(src.is_idle());
        // A command that outlives its deadline is killed and reaped.
        src.start(&mut reactor, &TokenSpec::Command("/bin/sleep 5".into()), t0)
            .unwrap();
        src.sweep(&mut reactor, t0 + TOKEN_COMMAND_DEADLINE);
        let done = src.take_done();
        assert!(done[0].1.as_ref().unwrap_err().contains("killed"));
        for _ in 0..500 {
            src.sweep(&mut reactor, Instant::now());
            if src.is_idle() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(src.is_idle());
        assert!(src
            .start(
                &mut reactor,
                &TokenSpec::Command("/nonexistent/cmd".into()),
                t0
            )
            .is_err());
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod refresh_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn grant(dir: &std::path::Path) -> RefreshGrant {
        std::fs::write(dir.join("refresh"), "1//old-rt\n").unwrap();
        std::fs::write(dir.join("secret"), "s&cret\n").unwrap();
        RefreshGrant {
            token_url: crate::http::Url::parse("https://127.0.0.1:8443/token").unwrap(),
            client_id: "id.apps".into(),
            client_secret_file: Some(dir.join("secret")),
            refresh_token_file: dir.join("refresh"),
        }
    }

    fn response(status: u16, body: &str) -> Result<HttpResponse, HttpError> {
        Ok(HttpResponse {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        })
    }

    #[test]
    fn refresh_posts_the_grant_and_caches_until_expiry_less_the_margin() {
        let dir = crate::test_dir::TempDir::new("refresh-cache");
        let g = grant(&dir.0);
        let spec = TokenSpec::Refresh(g.clone());
        let mut reactor: Reactor<u8> = Reactor::new().unwrap();
        let mut src = TokenSource::default();
        let t0 = Instant::now();
        src.start(&mut reactor, &spec, t0).unwrap();
        // A second job for the same grant does not send a second request.
        src.start(&mut reactor, &spec, t0).unwrap();
        let requests = src.take_requests();
        assert_eq!(requests.len(), 1);
        let (id, req) = &requests[0];
        assert_eq!(req.method, Method::Post);
        assert_eq!(req.url.path, "/token");
        assert_eq!(
            String::from_utf8(req.body.clone()).unwrap(),
            "grant_type=refresh_token&refresh_token=1%2F%2Fold-rt&client_id=id.apps&client_secret=s%26cret"
        );
        assert!(req.headers.contains(&(
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into()
        )));
        src.handle_http(
            *id,
            response(
                200,
                r#"{"access_token":"ya29.A","expires_in":3600,"token_type":"Bearer"}"#,
            ),
            t0,
        );
        assert_eq!(src.take_done(), vec![(spec.clone(), Ok("ya29.A".into()))]);
        assert_eq!(
            src.get(&spec, t0 + Duration::from_secs(3299)).as_deref(),
            Some("ya29.A")
        );
        assert_eq!(src.get(&spec, t0 + Duration::from_secs(3300)), None);
        // Not rotated: the file is untouched.
        assert_eq!(
            std::fs::read_to_string(&g.refresh_token_file).unwrap(),
            "1//old-rt\n"
        );
        assert!(src.is_idle());
    }

    #[test]
    fn a_rotated_refresh_token_is_written_and_used_next_time() {
        let dir = crate::test_dir::TempDir::new("refresh-rotate");
        let g = grant(&dir.0);
        std::fs::set_permissions(
            &g.refresh_token_file,
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let (token, life) = refresh_result(
            &g,
            response(
                200,
                r#"{"access_token":"eyJ0","expires_in":"4339","refresh_token":"0.new-rt"}"#,
            ),
        )
        .unwrap();
        assert_eq!(token, "eyJ0");
        assert_eq!(life, Duration::from_secs(4339 - 300));
        assert_eq!(
            std::fs::read_to_string(&g.refresh_token_file).unwrap(),
            "0.new-rt\n"
        );
        let mode = std::fs::metadata(&g.refresh_token_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let body = String::from_utf8(refresh_request(&g).unwrap().body).unwrap();
        assert!(body.contains("refresh_token=0.new-rt&"), "{body}");
    }

    #[test]
    fn failures_name_the_status_and_the_oauth_error() {
        let dir = crate::test_dir::TempDir::new("refresh-fail");
        let g = grant(&dir.0);
        let e = refresh_result(
            &g,
            response(400, r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "token endpoint https://127.0.0.1:8443/token refused the refresh: HTTP 400 \
             error=invalid_grant error_description=\"Token has been expired or revoked.\" \
             (the refresh token was revoked or expired: run `tern oauth login`)"
        );
        let e =
            refresh_result(&g, Err(HttpError::Connect("connection refused".into()))).unwrap_err();
        assert_eq!(
            e,
            "token endpoint https://127.0.0.1:8443/token: connect failed: connection refused"
        );
        let e = refresh_result(&g, response(503, "Service Unavailable")).unwrap_err();
        assert!(e.ends_with("HTTP 503 (no OAuth2 error in the body)"), "{e}");
        assert_eq!(
            std::fs::read_to_string(&g.refresh_token_file).unwrap(),
            "1//old-rt\n"
        );
        // Through the source: an error result, nothing cached; the next
        // start sends again.
        let spec = TokenSpec::Refresh(g.clone());
        let mut reactor: Reactor<u8> = Reactor::new().unwrap();
        let mut src = TokenSource::default();
        let t0 = Instant::now();
        src.start(&mut reactor, &spec, t0).unwrap();
        let (id, _) = src.take_requests().remove(0);
        src.handle_http(id, Err(HttpError::Timeout), t0);
        let done = src.take_done();
        assert!(done[0].1.as_ref().unwrap_err().contains("timed out"));
        assert_eq!(src.get(&spec, t0), None);
        src.start(&mut reactor, &spec, t0).unwrap();
        assert_eq!(src.take_requests().len(), 1);
        // An unreadable refresh token file: no request at all.
        std::fs::remove_file(&g.refresh_token_file).unwrap();
        let mut src = TokenSource::default();
        let e = src.start(&mut reactor, &spec, t0).unwrap_err();
        assert!(
            e.contains("refresh token file") && e.contains("No such file"),
            "{e}"
        );
        assert!(src.take_requests().is_empty());
    }
}
