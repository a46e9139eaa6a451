//! OAuth2 access tokens from a token command (`smarthost_oauth_token_command`,
//! a route's `oauth_token_command=`), for XOAUTH2 and OAUTHBEARER.
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
    fetched: Instant,
}

/// Runs token commands and caches their tokens, per command string.
#[derive(Default)]
pub struct TokenSource {
    cache: HashMap<String, Cached>,
    running: HashMap<String, Running>,
    /// Killed or finished children not reaped yet.
    reaping: Vec<Child>,
    /// Results of this call: the command and its token or why none.
    done: Vec<(String, Result<String, String>)>,
}

impl TokenSource {
    /// A cached token younger than [`TOKEN_LIFETIME`].
    pub fn get(&mut self, command: &str, now: Instant) -> Option<String> {
        match self.cache.get(command) {
            Some(c) if now.saturating_duration_since(c.fetched) < TOKEN_LIFETIME => {
                Some(c.token.clone())
            }
            Some(_) => {
                self.cache.remove(command);
                None
            }
            None => None,
        }
    }

    /// A server refused the token: the next delivery runs the command.
    pub fn forget(&mut self, command: &str) {
        if self.cache.remove(command).is_some() {
            log::info!(
                "OAuth2 token of {command:?} refused by the server; fetching a new one next time"
            );
        }
    }

    /// Starts `command` unless it runs already; its result comes from
    /// [`TokenSource::take_done`]. `Err`: it could not be started.
    pub fn start<K: Ord + Copy>(
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
    pub fn take_done(&mut self) -> Vec<(String, Result<String, String>)> {
        std::mem::take(&mut self.done)
    }

    /// Commands running (or not reaped yet).
    #[cfg(test)]
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.reaping.is_empty()
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
                    command.to_string(),
                    Cached {
                        token: token.clone(),
                        fetched: now,
                    },
                );
            }
            Err(e) => log::error!("OAuth2 token command {command:?}: {e}"),
        }
        self.done.push((command.to_string(), result));
    }
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
        let cmd = "/bin/echo tok123";
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
        assert_eq!(done, vec![(cmd.to_string(), Ok("tok123".to_string()))]);
        let now = Instant::now();
        assert_eq!(src.get(cmd, now).as_deref(), Some("tok123"));
        assert_eq!(src.get(cmd, now + TOKEN_LIFETIME), None);
        src.start(&mut reactor, "/bin/false", t0).unwrap();
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
        src.start(&mut reactor, "/bin/sleep 5", t0).unwrap();
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
        assert!(src.start(&mut reactor, "/nonexistent/cmd", t0).is_err());
    }
}
