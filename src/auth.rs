//! SMTP AUTH for tern: SASL PLAIN and LOGIN, the users file, password hashes
//! and brute-force limits.
//!
//! Why: the submission listener (RFC 6409) requires AUTH, and tern runs on one
//! thread, so everything here is sans-IO and cheap to drive from the reactor:
//! [`SaslServer`] turns client lines into [`SaslStep`]s, [`Users::check`] is one
//! bounded PBKDF2, and [`FailureLimiter`] takes `now` from the caller.
//!
//! Rules: RFC 4954 (SMTP AUTH; §4: the 12288-octet line limit, "*" cancels,
//! "=" is an empty initial response), RFC 4616 (PLAIN: `[authzid] NUL authcid
//! NUL passwd`), draft-murchison-sasl-login (LOGIN: "Username:"/"Password:"
//! prompts), RFC 4648 §4 (base64, strict), RFC 8018 §5.2 (PBKDF2).
//!
//! Invariants:
//! - A password never reaches a log line or a `Debug` output.
//! - Hash comparison is constant time (`ring::pbkdf2::verify`), and an unknown
//!   user costs the same PBKDF2 as a known one.
//! - Every table and input is bounded: [`MAX_SASL_LINE`],
//!   [`MAX_USERS_FILE_SIZE`], [`FailureLimiter`]'s `max_entries`.
//!
//! Hash format: `$pbkdf2-sha256$ITER$SALT$HASH`, SALT and HASH in padded
//! base64. The iteration count is stored per line, so it can be raised later
//! without invalidating old lines.
//!
//! Not supported: CRAM-MD5, SCRAM, XOAUTH2, EXTERNAL; authorization identities
//! other than the authenticated user (proxy authorization); SASLprep (RFC
//! 4013) normalisation: names and passwords compare as exact bytes.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::{Duration, Instant};

use ring::pbkdf2;

/// Longest AUTH response line, without CRLF (RFC 4954 §4).
/// A user name and password: what a client sends (smarthost AUTH) and what
/// the server verifies (`Event::Authenticate`). The password is never
/// printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: <hidden> }}",
            self.user
        )
    }
}

pub const MAX_SASL_LINE: usize = 12288;
/// Longest user name or password accepted (RFC 4616 §2 asks for at least 255).
pub const MAX_CREDENTIAL_LEN: usize = 1024;
/// PBKDF2-HMAC-SHA256 rounds for new hashes.
///
/// Each check runs on the reactor thread and stalls every other connection,
/// so it must stay in milliseconds on the target hardware. Measured with a
/// release build (opt-level "z") on the development box, an x86-64 Xeon with
/// SHA extensions: 4_096 rounds take 1.3-1.8 ms, 10_000 take 4.1 ms (about
/// 0.4 µs per round). Routers are slower per SHA-256 block by roughly 5x
/// (Cortex-A53 with ARMv8 crypto extensions, which ring uses) to 50x (MIPS
/// 24Kc/74Kc or Cortex-A7 without them), so 4_096 rounds cost about 7 ms to
/// 80 ms there, once per AUTH; 10_000 would reach 200 ms on the slowest.
/// Online guessing is bounded by [`FailureLimiter`] and [`failure_delay`];
/// the rounds only slow offline cracking of a stolen users file, which is
/// root-only on the router. Lines carry their own count, so it can be raised.
pub const PBKDF2_ITERATIONS: u32 = 4_096;
/// Hash lines with more rounds are rejected (with their line number): one
/// check must not stall the loop. 10_000 rounds cost ~4 ms here and up to
/// ~200 ms on the slowest router CPUs; 1,000,000 (the first version's cap)
/// would have stalled every connection for seconds per AUTH.
pub const MAX_PBKDF2_ITERATIONS: u32 = 10_000;
/// Random salt bytes per new hash.
pub const PBKDF2_SALT_LEN: usize = 16;
/// Derived key length (the SHA-256 output size).
pub const PBKDF2_HASH_LEN: usize = 32;
/// Largest users file read.
pub const MAX_USERS_FILE_SIZE: u64 = 1024 * 1024;
/// Reply delay after the first failed AUTH on a connection; doubles after.
pub const FAILURE_DELAY_BASE: Duration = Duration::from_secs(1);
/// Cap of [`failure_delay`], well under clients' 5-minute reply timeouts.
pub const MAX_FAILURE_DELAY: Duration = Duration::from_secs(8);
/// How long a verified login is remembered ([`Users::check`]): Dovecot's
/// `auth_cache_ttl` default.
pub const LOGIN_CACHE_TTL: Duration = Duration::from_secs(3600);
/// Most users remembered at once (the oldest entry makes room).
pub const LOGIN_CACHE_MAX: usize = 64;

const HASH_SCHEME: &str = "pbkdf2-sha256";
const PBKDF2_ALG: pbkdf2::Algorithm = pbkdf2::PBKDF2_HMAC_SHA256;

// ---------------------------------------------------------------- base64

const B64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b0 = chunk.first().copied().unwrap_or(0);
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let sextet = |shift: u32| {
            B64_ALPHABET
                .get(((n >> shift) & 63) as usize)
                .map_or('=', |&c| char::from(c))
        };
        out.push(sextet(18));
        out.push(sextet(12));
        out.push(if chunk.len() > 1 { sextet(6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(0) } else { '=' });
    }
    out
}

/// The value of one base64 alphabet octet (RFC 4648 §4).
pub(crate) fn b64_value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Strict decoding: padding required, no whitespace, no characters outside
/// the alphabet, and unused bits must be zero (the canonical encoding only).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let quads = bytes.len() / 4;
    let mut out = Vec::with_capacity(quads * 3);
    for (i, quad) in bytes.chunks_exact(4).enumerate() {
        let last = i + 1 == quads;
        let pad = match quad {
            [_, _, b'=', b'='] if last => 2,
            [_, _, _, b'='] if last => 1,
            _ => 0,
        };
        let mut n = 0u32;
        for &c in quad.iter().take(4 - pad) {
            n = (n << 6) | b64_value(c)?;
        }
        n <<= 6 * pad as u32;
        let [_, b0, b1, b2] = n.to_be_bytes();
        match pad {
            0 => out.extend_from_slice(&[b0, b1, b2]),
            1 if b2 == 0 => out.extend_from_slice(&[b0, b1]),
            2 if b1 == 0 && b2 == 0 => out.push(b0),
            _ => return None, // non-zero unused bits
        }
    }
    Some(out)
}

// ---------------------------------------------------------------- hashes

/// A parsed `$pbkdf2-sha256$...` line.
#[derive(Clone, PartialEq, Eq)]
struct PasswordHash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PasswordHash({} rounds)", self.iterations)
    }
}

impl PasswordHash {
    fn parse(line: &str) -> Result<PasswordHash, &'static str> {
        let mut parts = line.split('$');
        let (Some(""), Some(scheme), Some(iter), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err("password hash must look like $pbkdf2-sha256$ITER$SALT$HASH");
        };
        if scheme != HASH_SCHEME {
            return Err("unknown password hash scheme (expected pbkdf2-sha256)");
        }
        if iter.is_empty() || !iter.bytes().all(|b| b.is_ascii_digit()) {
            return Err("iteration count is not a number");
        }
        let iterations = iter
            .parse::<u32>()
            .ok()
            .filter(|&n| n <= MAX_PBKDF2_ITERATIONS)
            .and_then(NonZeroU32::new)
            .ok_or("iteration count out of range")?;
        let salt = base64_decode(salt)
            .filter(|s| !s.is_empty() && s.len() <= 64)
            .ok_or("salt is not valid base64 of 1 to 64 bytes")?;
        let hash = base64_decode(hash)
            .filter(|h| (16..=64).contains(&h.len()))
            .ok_or("hash is not valid base64 of 16 to 64 bytes")?;
        Ok(PasswordHash {
            iterations,
            salt,
            hash,
        })
    }

    fn verify(&self, password: &str) -> bool {
        pbkdf2::verify(
            PBKDF2_ALG,
            self.iterations,
            &self.salt,
            password.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }
}

/// `$pbkdf2-sha256$ITER$SALT_B64$HASH_B64` with [`PBKDF2_ITERATIONS`] rounds.
pub fn hash_password(password: &str, salt: &[u8]) -> String {
    let iterations = NonZeroU32::new(PBKDF2_ITERATIONS).unwrap_or(NonZeroU32::MIN);
    let mut out = [0u8; PBKDF2_HASH_LEN];
    pbkdf2::derive(PBKDF2_ALG, iterations, salt, password.as_bytes(), &mut out);
    format!(
        "${HASH_SCHEME}${iterations}${}${}",
        base64_encode(salt),
        base64_encode(&out)
    )
}

/// [`hash_password`] with a fresh random salt (for `tern passwd`).
pub fn new_hash(password: &str) -> io::Result<String> {
    let mut salt = [0u8; PBKDF2_SALT_LEN];
    crate::random::fill(&mut salt)?;
    Ok(hash_password(password, &salt))
}

/// Constant-time check of `password` against a hash line; a malformed line
/// or unknown scheme gives false.
pub fn verify_password(hash_line: &str, password: &str) -> bool {
    match PasswordHash::parse(hash_line) {
        Ok(h) => h.verify(password),
        Err(_) => false,
    }
}

// ---------------------------------------------------------------- users

/// The users file: `USER:HASH` lines, `#` comments, blank lines ignored.
pub struct Users {
    by_name: HashMap<String, PasswordHash>,
    /// Checked for unknown users, with the file's most common round count.
    dummy: PasswordHash,
    logins: LoginCache,
}

/// Logins verified lately, so that a device that logs in for every
/// message (most cameras, printers and scripts do) costs one PBKDF2 per
/// [`LOGIN_CACHE_TTL`], not one per message: a check is 1.5-3 ms on the
/// development box and up to 80 ms on a router, and the loop serves no one
/// meanwhile (the TLS submission benchmark spent 53 % of tern's CPU there).
/// Dovecot's auth cache does the same.
///
/// Kept per user: HMAC-SHA256 of the password under a key drawn at random
/// when the users file is loaded, and when it was verified; never the
/// password, and nothing that outlives the process or a reload (a new
/// users file starts with an empty cache). Only a success enters it; a
/// different password, or an entry past its time, goes through PBKDF2.
struct LoginCache {
    /// `None` if the system random source failed: every check runs PBKDF2.
    key: Option<ring::hmac::Key>,
    entries: HashMap<String, (ring::hmac::Tag, Instant)>,
}

impl LoginCache {
    fn new() -> LoginCache {
        let mut k = [0u8; 32];
        let key = crate::random::fill(&mut k)
            .ok()
            .map(|()| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &k));
        LoginCache {
            key,
            entries: HashMap::new(),
        }
    }

    /// `password` is the one `user` logged in with, verified since
    /// `now - LOGIN_CACHE_TTL` (the comparison is constant time).
    fn knows(&self, user: &str, password: &str, now: Instant) -> bool {
        let (Some(key), Some((tag, at))) = (&self.key, self.entries.get(user)) else {
            return false;
        };
        now.saturating_duration_since(*at) < LOGIN_CACHE_TTL
            && ring::hmac::verify(key, password.as_bytes(), tag.as_ref()).is_ok()
    }

    fn remember(&mut self, user: &str, password: &str, now: Instant) {
        let Some(key) = &self.key else {
            return;
        };
        if !self.entries.contains_key(user) && self.entries.len() >= LOGIN_CACHE_MAX {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(u, _)| u.clone());
            if let Some(u) = oldest {
                self.entries.remove(&u);
            }
        }
        let tag = ring::hmac::sign(key, password.as_bytes());
        self.entries.insert(user.to_string(), (tag, now));
    }
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Users({} entries)", self.by_name.len())
    }
}

impl Users {
    /// Parses the file text. Bad lines are skipped and reported with their
    /// 1-based line number; a line's content is never echoed (it may hold a
    /// password typed by mistake).
    pub fn parse(text: &str) -> (Users, Vec<(usize, String)>) {
        let mut by_name = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut errors = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let lineno = idx + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                errors.push((lineno, "expected USER:HASH".to_string()));
                continue;
            };
            let user = user.trim();
            if let Err(e) = check_user_name(user) {
                errors.push((lineno, e.to_string()));
                continue;
            }
            let hash = match PasswordHash::parse(hash.trim()) {
                Ok(h) => h,
                Err(e) => {
                    errors.push((lineno, format!("user {user}: {e}")));
                    continue;
                }
            };
            if let Some(first) = first_line.get(user) {
                errors.push((
                    lineno,
                    format!("duplicate user {user} (first on line {first}; that one is used)"),
                ));
                continue;
            }
            first_line.insert(user.to_string(), lineno);
            by_name.insert(user.to_string(), hash);
        }
        let dummy = PasswordHash {
            iterations: most_common_iterations(&by_name),
            salt: vec![0; PBKDF2_SALT_LEN],
            hash: vec![0; PBKDF2_HASH_LEN],
        };
        let users = Users {
            by_name,
            dummy,
            logins: LoginCache::new(),
        };
        (users, errors)
    }

    /// Reads and parses the file (at most [`MAX_USERS_FILE_SIZE`] bytes).
    pub fn load(path: &Path) -> io::Result<(Users, Vec<(usize, String)>)> {
        let bytes = crate::system::read_bounded(std::fs::File::open(path)?, MAX_USERS_FILE_SIZE)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8"))?;
        Ok(Self::parse(&text))
    }

    /// True if `user` exists and `password` matches. An unknown user still
    /// runs one PBKDF2 so response time does not reveal which users exist.
    /// A login verified within [`LOGIN_CACHE_TTL`] before `now` with the
    /// same password is not verified again ([`LoginCache`]).
    pub fn check(&mut self, user: &str, password: &str, now: Instant) -> bool {
        if self.logins.knows(user, password, now) {
            return true;
        }
        match self.by_name.get(user) {
            Some(h) => {
                let ok = h.verify(password);
                if ok {
                    self.logins.remember(user, password, now);
                }
                ok
            }
            None => {
                let _ = self.dummy.verify(password);
                false
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

fn check_user_name(user: &str) -> Result<(), &'static str> {
    if user.is_empty() {
        return Err("empty user name");
    }
    if user.len() > MAX_CREDENTIAL_LEN {
        return Err("user name too long");
    }
    if user.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("user name contains whitespace or control characters");
    }
    Ok(())
}

fn most_common_iterations(by_name: &HashMap<String, PasswordHash>) -> NonZeroU32 {
    let mut counts: HashMap<NonZeroU32, usize> = HashMap::new();
    for h in by_name.values() {
        *counts.entry(h.iterations).or_insert(0) += 1;
    }
    counts
        .into_iter()
        .max_by_key(|&(iter, n)| (n, iter))
        .map(|(iter, _)| iter)
        .unwrap_or(NonZeroU32::new(PBKDF2_ITERATIONS).unwrap_or(NonZeroU32::MIN))
}

// ---------------------------------------------------------------- SASL

/// LOGIN's "Username:" prompt, base64.
pub const LOGIN_USER_PROMPT: &str = "VXNlcm5hbWU6";
/// LOGIN's "Password:" prompt, base64.
pub const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

/// What the SMTP session does next.
#[derive(Clone, PartialEq, Eq)]
pub enum SaslStep {
    /// Send `334 ` followed by this base64 text, then read one line.
    Challenge(String),
    /// Credentials to check with [`Users::check`].
    Done { user: String, password: String },
    /// The exchange failed (reply 501 5.5.2); the reason is safe to log.
    Failed(&'static str),
    /// The client sent "*" (reply 501 5.7.0, RFC 4954 §4).
    Cancelled,
}

impl fmt::Debug for SaslStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Challenge(c) => write!(f, "Challenge({c:?})"),
            Self::Done { user, .. } => write!(f, "Done {{ user: {user:?}, password: <hidden> }}"),
            Self::Failed(r) => write!(f, "Failed({r:?})"),
            Self::Cancelled => f.write_str("Cancelled"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SaslState {
    /// PLAIN without initial response: waiting for the message.
    PlainMessage,
    LoginUser,
    LoginPassword {
        user: String,
    },
    Finished,
}

/// Server side of one AUTH exchange, sans-IO.
#[derive(Debug)]
pub struct SaslServer {
    state: SaslState,
}

impl SaslServer {
    /// From the AUTH command's argument text, e.g. "PLAIN dGVzdAB0ZXN0ADEyMzQ="
    /// or "LOGIN". Errors: "unsupported mechanism" (reply 504 5.5.4) or a
    /// syntax problem (reply 501 5.5.4).
    pub fn start(args: &str) -> Result<(SaslServer, SaslStep), &'static str> {
        let mut words = args.split(' ');
        let mechanism = words.next().unwrap_or("");
        let initial = words.next();
        if words.next().is_some() {
            return Err("too many AUTH arguments");
        }
        if mechanism.is_empty() {
            return Err("missing SASL mechanism");
        }
        let is_plain = mechanism.eq_ignore_ascii_case("PLAIN");
        if !is_plain && !mechanism.eq_ignore_ascii_case("LOGIN") {
            return Err("unsupported mechanism");
        }
        let mut server = SaslServer {
            state: if is_plain {
                SaslState::PlainMessage
            } else {
                SaslState::LoginUser
            },
        };
        let step = match initial {
            None if is_plain => SaslStep::Challenge(String::new()),
            None => SaslStep::Challenge(LOGIN_USER_PROMPT.to_string()),
            Some("") => return Err("empty initial response"),
            // RFC 4954 §4: "=" is a present but empty initial response.
            Some("=") => server.respond(Vec::new()),
            Some(ir) if ir.len() > MAX_SASL_LINE => server.finish("response too long"),
            Some(ir) => match base64_decode(ir) {
                Some(bytes) => server.respond(bytes),
                None => server.finish("invalid base64"),
            },
        };
        Ok((server, step))
    }

    /// One client response line (without CRLF).
    pub fn step(&mut self, line: &str) -> SaslStep {
        if self.state == SaslState::Finished {
            return SaslStep::Failed("exchange already finished");
        }
        if line == "*" {
            self.state = SaslState::Finished;
            return SaslStep::Cancelled;
        }
        if line.len() > MAX_SASL_LINE {
            return self.finish("response too long");
        }
        match base64_decode(line) {
            Some(bytes) => self.respond(bytes),
            None => self.finish("invalid base64"),
        }
    }

    fn finish(&mut self, reason: &'static str) -> SaslStep {
        self.state = SaslState::Finished;
        SaslStep::Failed(reason)
    }

    fn respond(&mut self, bytes: Vec<u8>) -> SaslStep {
        match std::mem::replace(&mut self.state, SaslState::Finished) {
            SaslState::PlainMessage => parse_plain(&bytes),
            SaslState::LoginUser => match credential(bytes) {
                Ok(user) if !user.is_empty() => {
                    self.state = SaslState::LoginPassword { user };
                    SaslStep::Challenge(LOGIN_PASSWORD_PROMPT.to_string())
                }
                Ok(_) => SaslStep::Failed("empty user name"),
                Err(e) => SaslStep::Failed(e),
            },
            SaslState::LoginPassword { user } => match credential(bytes) {
                Ok(password) if !password.is_empty() => SaslStep::Done { user, password },
                Ok(_) => SaslStep::Failed("empty password"),
                Err(e) => SaslStep::Failed(e),
            },
            SaslState::Finished => SaslStep::Failed("exchange already finished"),
        }
    }
}

/// UTF-8, bounded, no NUL.
fn credential(bytes: Vec<u8>) -> Result<String, &'static str> {
    if bytes.len() > MAX_CREDENTIAL_LEN {
        return Err("credential too long");
    }
    if bytes.contains(&0) {
        return Err("NUL in credential");
    }
    String::from_utf8(bytes).map_err(|_| "credential is not UTF-8")
}

/// RFC 4616 §2: `[authzid] NUL authcid NUL passwd`.
fn parse_plain(message: &[u8]) -> SaslStep {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(passwd), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return SaslStep::Failed("PLAIN message needs exactly two NULs");
    };
    if authcid.is_empty() || passwd.is_empty() {
        return SaslStep::Failed("PLAIN message with empty user or password");
    }
    if !authzid.is_empty() && authzid != authcid {
        return SaslStep::Failed("PLAIN authzid differs from authcid");
    }
    match (credential(authcid.to_vec()), credential(passwd.to_vec())) {
        (Ok(user), Ok(password)) => SaslStep::Done { user, password },
        (Err(e), _) | (_, Err(e)) => SaslStep::Failed(e),
    }
}

// ---------------------------------------------------------------- limits

/// Per-client failure counter for AUTH brute-force protection, sans-IO.
///
/// After `max_failures` failures within `window`, the client is blocked for
/// `window` from the last failure. A successful login changes nothing here:
/// it must not reset the address's count, or one valid account (the
/// attacker's own, or a leaked one) would give unlimited guesses at the
/// others (issue 11). Legitimate users behind the same address share the
/// count; failures age out after `window`. IPv6 clients are counted per /64 (one
/// host usually owns a whole /64) and IPv4-mapped IPv6 as IPv4. The table
/// holds at most `max_entries`; when full, expired entries go first, then
/// the least recently failed one.
#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    max_entries: usize,
    entries: HashMap<IpAddr, FailureEntry>,
}

#[derive(Debug, Clone, Copy)]
struct FailureEntry {
    failures: u32,
    window_start: Instant,
    last_failure: Instant,
    blocked_until: Option<Instant>,
}

impl FailureEntry {
    /// Neither counting nor blocking any more at `now`.
    fn expired(&self, now: Instant, window: Duration) -> bool {
        let blocked = self.blocked_until.is_some_and(|t| now < t);
        !blocked && now.saturating_duration_since(self.window_start) >= window
    }
}

impl FailureLimiter {
    pub fn new(max_failures: u32, window: Duration, max_entries: usize) -> Self {
        FailureLimiter {
            max_failures: max_failures.max(1),
            window,
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
        }
    }

    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        self.entries
            .get(&limiter_key(ip))
            .and_then(|e| e.blocked_until)
            .is_some_and(|t| now < t)
    }

    /// One login attempt from `ip`: `None` while the address is blocked
    /// (the password is not even checked), else what `verify` said. A
    /// failure is counted; a success changes nothing (see the type's doc).
    pub fn attempt(
        &mut self,
        ip: IpAddr,
        now: Instant,
        verify: impl FnOnce() -> bool,
    ) -> Option<bool> {
        if self.is_blocked(ip, now) {
            return None;
        }
        let ok = verify();
        if !ok {
            self.record_failure(ip, now);
        }
        Some(ok)
    }

    pub fn record_failure(&mut self, ip: IpAddr, now: Instant) {
        let key = limiter_key(ip);
        if !self.entries.contains_key(&key) && self.entries.len() >= self.max_entries {
            self.evict(now);
        }
        let window = self.window;
        let entry = self.entries.entry(key).or_insert(FailureEntry {
            failures: 0,
            window_start: now,
            last_failure: now,
            blocked_until: None,
        });
        if entry.expired(now, window) {
            *entry = FailureEntry {
                failures: 0,
                window_start: now,
                last_failure: now,
                blocked_until: None,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        if entry.failures >= self.max_failures {
            entry.blocked_until = now.checked_add(window);
        }
    }

    /// Entries currently held (bounded by `max_entries`).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Makes room for one entry: drop expired ones, else the stalest.
    fn evict(&mut self, now: Instant) {
        let window = self.window;
        self.entries.retain(|_, e| !e.expired(now, window));
        if self.entries.len() < self.max_entries {
            return;
        }
        let stalest = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.last_failure)
            .map(|(k, _)| *k);
        if let Some(k) = stalest {
            self.entries.remove(&k);
        }
    }
}

fn limiter_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// How long to hold the 535 reply after the n-th failure on one connection:
/// 0 for none, then 1s, 2s, 4s, ... capped at [`MAX_FAILURE_DELAY`]. The
/// reactor arms a timer for it; nothing sleeps.
pub fn failure_delay(failures_on_this_connection: u32) -> Duration {
    if failures_on_this_connection == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures_on_this_connection - 1).min(16);
    FAILURE_DELAY_BASE
        .saturating_mul(1u32 << doublings)
        .min(MAX_FAILURE_DELAY)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests {
    use super::*;

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials {
            user: "joe".into(),
            password: "s3cret".into(),
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("joe") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
    use std::net::{Ipv4Addr, Ipv6Addr};

    // ---- base64

    #[test]
    fn base64_rfc4648_vectors() {
        let vectors: [(&str, &str); 7] = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), enc);
            assert_eq!(base64_decode(enc).as_deref(), Some(plain.as_bytes()));
        }
    }

    #[test]
    fn base64_round_trips_all_bytes() {
        let data: Vec<u8> = (0..=255u8).collect();
        for len in 0..data.len() {
            let enc = base64_encode(&data[..len]);
            assert_eq!(base64_decode(&enc).as_deref(), Some(&data[..len]));
        }
        assert_eq!(base64_encode(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn base64_rejects_invalid() {
        for bad in [
            "Zg", "Zg=", "Zm9", "Zm9v\r\n", " Zm9v", "Zm 9v", "Zg==Zm9v", "Z===", "====", "Zm=v",
            "Zh==", "Zm9=", "Zm-_", "Zm9v!", "Zg==\n",
        ] {
            assert_eq!(base64_decode(bad), None, "{bad:?}");
        }
    }

    // ---- hashes

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn pbkdf2_matches_rfc7914_vector() {
        // RFC 7914 §11, first PBKDF2-HMAC-SHA256 vector.
        let mut out = [0u8; 64];
        pbkdf2::derive(PBKDF2_ALG, NonZeroU32::MIN, b"salt", b"passwd", &mut out);
        assert_eq!(
            hex(&out),
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc\
             49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"
        );
        // The same vector through the hash line format (dkLen 64, c = 1).
        let line = format!(
            "$pbkdf2-sha256$1${}${}",
            base64_encode(b"salt"),
            base64_encode(&out)
        );
        assert!(verify_password(&line, "passwd"));
        assert!(!verify_password(&line, "passwe"));
    }

    #[test]
    fn hash_and_verify_round_trip() {
        let salt = [7u8; PBKDF2_SALT_LEN];
        let line = hash_password("correct horse", &salt);
        assert!(line.starts_with(&format!(
            "$pbkdf2-sha256${PBKDF2_ITERATIONS}${}$",
            base64_encode(&salt)
        )));
        assert_eq!(line, hash_password("correct horse", &salt), "deterministic");
        assert!(verify_password(&line, "correct horse"));
        assert!(!verify_password(&line, "correct horse "));
        assert!(!verify_password(&line, ""));
        let fresh = new_hash("pw").unwrap();
        assert_ne!(fresh, new_hash("pw").unwrap(), "random salts");
        assert!(verify_password(&fresh, "pw"));
    }

    #[test]
    fn malformed_hash_lines_never_verify() {
        let good = hash_password("pw", b"0123456789abcdef");
        let parts: Vec<&str> = good.split('$').collect();
        let (salt, hash) = (parts[3], parts[4]);
        for bad in [
            String::new(),
            "pw".to_string(),
            format!("$pbkdf2-sha1$4096${salt}${hash}"),
            format!("$pbkdf2-sha256$0${salt}${hash}"),
            format!("$pbkdf2-sha256$+4096${salt}${hash}"),
            format!("$pbkdf2-sha256$99999999${salt}${hash}"),
            format!("$pbkdf2-sha256$4096$${hash}"),
            format!("$pbkdf2-sha256$4096${salt}$"),
            format!("$pbkdf2-sha256$4096${salt}${hash}$"),
            format!("pbkdf2-sha256$4096${salt}${hash}"),
            format!("$pbkdf2-sha256$4096${salt}$!{hash}"),
        ] {
            assert!(!verify_password(&bad, "pw"), "{bad}");
        }
    }

    // ---- users

    #[test]
    fn hash_lines_with_more_rounds_than_the_loop_can_afford_are_refused() {
        let default = hash_password("pw", b"salt-for-rounds!");
        let rounds = PBKDF2_ITERATIONS.to_string();
        let line = |n: u32| default.replacen(&rounds, &n.to_string(), 1);
        let (users, errors) = Users::parse(&format!(
            "ok:{}\nslow:{}\nvery:{}\n",
            line(MAX_PBKDF2_ITERATIONS),
            line(MAX_PBKDF2_ITERATIONS + 1),
            line(1_000_000)
        ));
        assert_eq!(users.len(), 1);
        let lines: Vec<usize> = errors.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [2, 3]);
        assert!(errors.iter().all(|(_, e)| e.contains("iteration count")));
    }

    #[test]
    fn users_file_parsing_with_line_numbers() {
        let alice = hash_password("alice-pw", b"salt-for-alice!!");
        let bob = hash_password("bob-pw", b"salt-for-bob....");
        let text = format!(
            "# tern users\n\
             \n\
             alice:{alice}\n\
             no colon here\n\
             :{bob}\n\
             carol:plaintext-password\n\
             alice:{bob}\n\
             \x20 bob : {bob} \r\n\
             bad user:{bob}\n"
        );
        let (mut users, errors) = Users::parse(&text);
        assert_eq!(users.len(), 2);
        let lines: Vec<usize> = errors.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![4, 5, 6, 7, 9]);
        assert_eq!(errors[0].1, "expected USER:HASH");
        assert_eq!(errors[1].1, "empty user name");
        assert!(errors[2].1.starts_with("user carol: "), "{}", errors[2].1);
        assert!(!errors[2].1.contains("plaintext-password"), "never echo");
        assert!(errors[3].1.contains("first on line 3"), "{}", errors[3].1);
        assert!(errors[4].1.contains("whitespace"));
        assert!(
            users.check("alice", "alice-pw", Instant::now()),
            "first alice line wins"
        );
        assert!(!users.check("alice", "bob-pw", Instant::now()));
        assert!(users.check("bob", "bob-pw", Instant::now()));
        assert!(
            !users.check("Bob", "bob-pw", Instant::now()),
            "names are case-sensitive"
        );
        assert!(!users.check("nobody", "bob-pw", Instant::now()));
        assert!(!format!("{users:?}").contains("pbkdf2"));
    }

    #[test]
    fn unknown_user_costs_a_pbkdf2_with_the_files_rounds() {
        let line = "$pbkdf2-sha256$2000$c2FsdHNhbHQ=$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let (users, errors) = Users::parse(&format!("u:{line}\nv:{line}\n"));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(users.dummy.iterations.get(), 2000);
        let (mut empty, _) = Users::parse("");
        assert!(empty.is_empty());
        assert_eq!(empty.dummy.iterations.get(), PBKDF2_ITERATIONS);
        assert!(!empty.check("anyone", "anything", Instant::now()));
    }

    /// A verified login is remembered for LOGIN_CACHE_TTL (no PBKDF2: the
    /// stored hash is not looked at again), only with the same password,
    /// and never a failure; the cache stays within LOGIN_CACHE_MAX users.
    #[test]
    fn verified_logins_are_remembered_for_a_while() {
        let t0 = Instant::now();
        let line = hash_password("pw", b"0123456789abcdef");
        let (mut users, _) = Users::parse(&format!("u:{line}\nv:{line}\n"));
        assert!(!users.check("u", "wrong", t0));
        assert!(
            users.logins.entries.is_empty(),
            "a failure is not remembered"
        );
        assert!(users.check("u", "pw", t0));
        // Without the cache this hash would refuse "pw".
        let other = PasswordHash::parse(&hash_password("other", b"0123456789abcdef")).unwrap();
        users.by_name.insert("u".to_string(), other);
        assert!(users.check("u", "pw", t0 + LOGIN_CACHE_TTL / 2));
        assert!(
            !users.check("u", "wrong", t0),
            "another password is verified"
        );
        assert!(!users.check("v", "wrong", t0));
        assert!(
            !users.check("u", "pw", t0 + LOGIN_CACHE_TTL),
            "after the TTL the stored hash decides"
        );
        assert!(users.check("u", "other", t0 + LOGIN_CACHE_TTL));
        // Bounded: the oldest entry makes room.
        let names: Vec<String> = (0..LOGIN_CACHE_MAX + 5).map(|i| format!("n{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            users
                .logins
                .remember(n, "pw", t0 + Duration::from_secs(i as u64));
        }
        assert_eq!(users.logins.entries.len(), LOGIN_CACHE_MAX);
        assert!(!users.logins.entries.contains_key("n0"));
        assert!(users
            .logins
            .entries
            .contains_key(&names[LOGIN_CACHE_MAX + 4]));
    }

    #[test]
    fn users_load_reads_a_file() {
        let dir = std::env::temp_dir().join(format!("tern-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users");
        std::fs::write(&path, format!("u:{}\nbroken\n", hash_password("pw", b"x"))).unwrap();
        let (mut users, errors) = Users::load(&path).unwrap();
        assert!(users.check("u", "pw", Instant::now()));
        assert_eq!(errors, vec![(2, "expected USER:HASH".to_string())]);
        assert!(Users::load(&dir.join("missing")).is_err());
    }

    // ---- SASL

    fn done(user: &str, password: &str) -> SaslStep {
        SaslStep::Done {
            user: user.to_string(),
            password: password.to_string(),
        }
    }

    #[test]
    fn plain_with_initial_response() {
        // RFC 4616 §4 style: "\0tim\0tanstaaftanstaaf"
        let ir = base64_encode(b"\0tim\0tanstaaftanstaaf");
        let (_, step) = SaslServer::start(&format!("PLAIN {ir}")).unwrap();
        assert_eq!(step, done("tim", "tanstaaftanstaaf"));
        let (_, step) = SaslServer::start("plain dGVzdAB0ZXN0ADEyMzQ=").unwrap();
        assert_eq!(step, done("test", "1234"), "authzid == authcid");
    }

    #[test]
    fn plain_with_continuation() {
        let (mut s, step) = SaslServer::start("PLAIN").unwrap();
        assert_eq!(step, SaslStep::Challenge(String::new()));
        assert_eq!(s.step(&base64_encode(b"\0u\0p w")), done("u", "p w"));
        assert_eq!(
            s.step("AHUAcA=="),
            SaslStep::Failed("exchange already finished")
        );
    }

    #[test]
    fn plain_rejects_malformed_messages() {
        let cases: [(&[u8], &str); 7] = [
            (b"\0u", "PLAIN message needs exactly two NULs"),
            (b"up", "PLAIN message needs exactly two NULs"),
            (b"\0u\0p\0", "PLAIN message needs exactly two NULs"),
            (b"\0\0p", "PLAIN message with empty user or password"),
            (b"\0u\0", "PLAIN message with empty user or password"),
            (b"admin\0u\0p", "PLAIN authzid differs from authcid"),
            (b"\0u\0\xff\xfe", "credential is not UTF-8"),
        ];
        for (msg, reason) in cases {
            let (_, step) = SaslServer::start(&format!("PLAIN {}", base64_encode(msg))).unwrap();
            assert_eq!(step, SaslStep::Failed(reason), "{msg:?}");
        }
        let (_, step) = SaslServer::start("PLAIN =").unwrap();
        assert_eq!(
            step,
            SaslStep::Failed("PLAIN message needs exactly two NULs")
        );
        let (mut s, step) = SaslServer::start("PLAIN not*base64").unwrap();
        assert_eq!(step, SaslStep::Failed("invalid base64"));
        assert_eq!(s.step("*"), SaslStep::Failed("exchange already finished"));
    }

    #[test]
    fn login_exchange() {
        let (mut s, step) = SaslServer::start("LOGIN").unwrap();
        assert_eq!(step, SaslStep::Challenge("VXNlcm5hbWU6".to_string()));
        assert_eq!(base64_decode(LOGIN_USER_PROMPT).unwrap(), b"Username:");
        let step = s.step(&base64_encode(b"alice"));
        assert_eq!(step, SaslStep::Challenge("UGFzc3dvcmQ6".to_string()));
        assert_eq!(base64_decode(LOGIN_PASSWORD_PROMPT).unwrap(), b"Password:");
        let step = s.step(&base64_encode(b"s3cret"));
        assert_eq!(step, done("alice", "s3cret"));
        assert!(!format!("{step:?}").contains("s3cret"), "Debug hides it");
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn login_with_initial_user() {
        let (mut s, step) = SaslServer::start(&format!("LOGIN {}", base64_encode(b"bob"))).unwrap();
        assert_eq!(step, SaslStep::Challenge(LOGIN_PASSWORD_PROMPT.to_string()));
        assert_eq!(s.step(&base64_encode(b"pw")), done("bob", "pw"));
    }

    #[test]
    fn login_failures() {
        let (mut s, _) = SaslServer::start("LOGIN").unwrap();
        assert_eq!(s.step(""), SaslStep::Failed("empty user name"));
        let (mut s, _) = SaslServer::start("LOGIN").unwrap();
        s.step("dQ==");
        assert_eq!(s.step(""), SaslStep::Failed("empty password"));
        let (mut s, _) = SaslServer::start("LOGIN").unwrap();
        assert_eq!(s.step("dQ"), SaslStep::Failed("invalid base64"));
        let (mut s, _) = SaslServer::start("LOGIN").unwrap();
        assert_eq!(
            s.step(&base64_encode(b"a\0b")),
            SaslStep::Failed("NUL in credential")
        );
        let (mut s, _) = SaslServer::start("LOGIN").unwrap();
        let long = "A".repeat(MAX_SASL_LINE + 4);
        assert_eq!(s.step(&long), SaslStep::Failed("response too long"));
        let (mut s, _) = SaslServer::start("LOGIN").unwrap();
        let long = base64_encode(&vec![b'a'; MAX_CREDENTIAL_LEN + 1]);
        assert_eq!(s.step(&long), SaslStep::Failed("credential too long"));
    }

    #[test]
    fn cancel_with_star() {
        let (mut s, _) = SaslServer::start("LOGIN").unwrap();
        assert_eq!(s.step("*"), SaslStep::Cancelled);
        assert_eq!(
            s.step("dQ=="),
            SaslStep::Failed("exchange already finished")
        );
        let (mut s, _) = SaslServer::start("LOGIN").unwrap();
        s.step("dQ==");
        assert_eq!(s.step("*"), SaslStep::Cancelled);
        let (mut s, _) = SaslServer::start("PLAIN").unwrap();
        assert_eq!(s.step("*"), SaslStep::Cancelled);
    }

    #[test]
    fn start_errors() {
        assert_eq!(
            SaslServer::start("CRAM-MD5").unwrap_err(),
            "unsupported mechanism"
        );
        assert_eq!(SaslServer::start("").unwrap_err(), "missing SASL mechanism");
        assert_eq!(
            SaslServer::start("PLAIN a b").unwrap_err(),
            "too many AUTH arguments"
        );
        assert_eq!(
            SaslServer::start("PLAIN ").unwrap_err(),
            "empty initial response"
        );
        assert_eq!(
            SaslServer::start(" PLAIN").unwrap_err(),
            "missing SASL mechanism"
        );
    }

    // ---- limiter

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn limiter_blocks_after_n_failures_until_window_passes() {
        let t0 = Instant::now();
        let window = Duration::from_secs(600);
        let mut lim = FailureLimiter::new(3, window, 100);
        let ip = v4(1);
        lim.record_failure(ip, t0);
        lim.record_failure(ip, t0 + Duration::from_secs(10));
        assert!(!lim.is_blocked(ip, t0 + Duration::from_secs(11)));
        let t3 = t0 + Duration::from_secs(20);
        lim.record_failure(ip, t3);
        assert!(lim.is_blocked(ip, t3));
        assert!(!lim.is_blocked(v4(2), t3), "others unaffected");
        assert!(lim.is_blocked(ip, t3 + window - Duration::from_secs(1)));
        assert!(!lim.is_blocked(ip, t3 + window));
        // After the block, counting starts over.
        lim.record_failure(ip, t3 + window);
        assert!(!lim.is_blocked(ip, t3 + window));
    }

    #[test]
    fn limiter_forgets_failures_outside_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        let mut lim = FailureLimiter::new(2, window, 100);
        lim.record_failure(v4(1), t0);
        lim.record_failure(v4(1), t0 + window + Duration::from_secs(1));
        assert!(!lim.is_blocked(v4(1), t0 + window + Duration::from_secs(1)));
    }

    /// Issue 11 item 13: a login between guesses reset the count.
    #[test]
    fn limiter_success_does_not_clear_the_address() {
        let t0 = Instant::now();
        let mut lim = FailureLimiter::new(3, Duration::from_secs(60), 100);
        let ip = v4(1);
        // The attacker's own account logs in between guesses at others.
        for _ in 0..2 {
            assert_eq!(lim.attempt(ip, t0, || false), Some(false));
            assert_eq!(lim.attempt(ip, t0, || true), Some(true));
        }
        assert_eq!(lim.attempt(ip, t0, || false), Some(false));
        assert!(lim.is_blocked(ip, t0));
        assert_eq!(lim.attempt(ip, t0, || true), None, "blocked, valid or not");
        assert!(!lim.is_blocked(v4(2), t0));
        assert_eq!(lim.len(), 1);
    }

    #[test]
    fn limiter_groups_ipv6_by_64_and_maps_v4() {
        let t0 = Instant::now();
        let mut lim = FailureLimiter::new(2, Duration::from_secs(60), 100);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        lim.record_failure(a, t0);
        lim.record_failure(b, t0);
        assert!(lim.is_blocked(a, t0) && lim.is_blocked(b, t0));
        assert!(!lim.is_blocked(other, t0));
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        lim.record_failure(mapped, t0);
        lim.record_failure(v4(7), t0);
        assert!(lim.is_blocked(v4(7), t0));
        assert!(!lim.is_blocked(IpAddr::V6(Ipv6Addr::LOCALHOST), t0));
    }

    #[test]
    fn limiter_table_is_bounded() {
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        let mut lim = FailureLimiter::new(2, window, 4);
        // A blocked client that is the most recent keeps its entry.
        for i in 0..4u8 {
            lim.record_failure(v4(i), t0 + Duration::from_secs(u64::from(i)));
        }
        let t = t0 + Duration::from_secs(10);
        lim.record_failure(v4(3), t);
        assert!(lim.is_blocked(v4(3), t));
        for i in 10..200u8 {
            lim.record_failure(v4(i), t + Duration::from_secs(u64::from(i)));
            assert!(lim.len() <= 4);
        }
        assert_eq!(lim.len(), 4);
        // The stalest went first, so the newest entries survive.
        let now = t + Duration::from_secs(200);
        lim.record_failure(v4(199), now);
        assert!(lim.is_blocked(v4(199), now));
        // Expired entries are evicted before live ones.
        let mut lim = FailureLimiter::new(1, window, 2);
        lim.record_failure(v4(1), t0);
        lim.record_failure(v4(2), t0 + window);
        let later = t0 + window + Duration::from_secs(1);
        lim.record_failure(v4(3), later);
        assert!(lim.is_blocked(v4(2), later), "live entry kept");
        assert!(lim.is_blocked(v4(3), later));
        assert!(!lim.is_blocked(v4(1), later));
    }

    #[test]
    fn failure_delay_doubles_and_caps() {
        let secs: Vec<u64> = (0..7).map(|n| failure_delay(n).as_secs()).collect();
        assert_eq!(secs, vec![0, 1, 2, 4, 8, 8, 8]);
        assert_eq!(failure_delay(u32::MAX), MAX_FAILURE_DELAY);
    }
}
