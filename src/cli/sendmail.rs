//! `sendmail`: the injection path cron, scripts and PHP's `mail()` use.
//!
//! The message is read from stdin, given `From:`, `Date:` and
//! `Message-ID:` when missing, and written as a durable drop file under the
//! spool (see `spool::drop`); the daemon imports it at once if running, or
//! when it starts. Mail is never lost because the daemon is down. The
//! header block is read into a bounded buffer (it must be inspected for
//! `-t` and the fix-ups); the body streams through.
//!
//! Unqualified addresses (`root`) in the envelope and in the
//! `From/To/Cc/Bcc/Sender/Reply-To` fields get `@qualify_domain` here,
//! where the header block is already held and split into fields (the
//! daemon's drop import streams the header and would need a second
//! field buffer). For `-bs`, whose header arrives in pieces through the
//! SMTP session, the streaming `rewrite::header::HeaderRewriter::qualifier`
//! does the same.
//!
//! Flags (sendmail(8) compatible): `-t -i -oi -f ADDR -r ADDR -F NAME -bm
//! -bp -q -v -B TYPE`, `-oX...` accepted and ignored. `-bs` runs the same
//! SMTP server session as the daemon on stdin/stdout, with drop files as
//! its spool (local injection: relaying allowed, like the other modes).
//!
//! Lines over 998 octets are accepted (a cron job cannot fix its output);
//! the daemon breaks them when it imports the drop, as Postfix's
//! `smtp_line_length_limit` does (see `daemon::drop`). `-bs` refuses them
//! like the SMTP server.

use std::io::{self, BufRead, BufReader, Read};

use super::{EX_CANTCREAT, EX_DATAERR, EX_OK, EX_TEMPFAIL, EX_USAGE};
use crate::bounce::rfc5322_date;
use crate::config::Config;
use crate::daemon::unix_now;
use crate::smtp::address::Address;
use crate::spool::drop::DropWriter;

/// The header block is held in memory to be inspected; more is an error.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flags {
    pub from_headers: bool,
    pub ignore_dots: bool,
    pub sender: Option<String>,
    pub full_name: Option<String>,
    pub verbose: bool,
    pub mode: Mode,
    pub recipients: Vec<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Deliver,
    ListQueue,
    RunQueue,
    SmtpOnStdin,
}

pub fn parse_flags(args: &[String]) -> Result<Flags, String> {
    let mut f = Flags::default();
    let mut i = 0;
    let value = |i: &mut usize, flag: &str, attached: &str| -> Result<String, String> {
        if !attached.is_empty() {
            return Ok(attached.to_string());
        }
        *i += 1;
        args.get(*i)
            .cloned()
            .ok_or_else(|| format!("{flag} needs a value"))
    };
    while let Some(a) = args.get(i).map(String::as_str) {
        if a == "--" {
            f.recipients.extend(args.iter().skip(i + 1).cloned());
            break;
        }
        if !a.starts_with('-') || a == "-" {
            f.recipients.push(a.to_string());
            i += 1;
            continue;
        }
        // A flag with its value attached (`-fme@x`): the first two octets
        // are the flag (not a char boundary: no known flag, refused below).
        let (flag, attached) = a.split_at_checked(2).unwrap_or((a, ""));
        match a {
            "-t" => f.from_headers = true,
            "-i" | "-oi" => f.ignore_dots = true,
            "-v" => f.verbose = true,
            "-bm" => f.mode = Mode::Deliver,
            "-bp" => f.mode = Mode::ListQueue,
            "-bs" => f.mode = Mode::SmtpOnStdin,
            "-q" => f.mode = Mode::RunQueue,
            _ if flag == "-f" || flag == "-r" => {
                let v = value(&mut i, flag, attached)?;
                let v = v
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string();
                f.sender = Some(v);
            }
            _ if flag == "-F" => f.full_name = Some(value(&mut i, flag, attached)?),
            _ if flag == "-B" => {
                value(&mut i, flag, attached)?;
            }
            _ if flag == "-q" => f.mode = Mode::RunQueue, // -q30m etc.
            _ if flag == "-o" => {}                       // -odb, -odi, -oem, ...
            _ => return Err(format!("unknown option {a}")),
        }
        i += 1;
    }
    Ok(f)
}

pub fn main(cfg: Config, args: Vec<String>) -> i32 {
    let flags = match parse_flags(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("sendmail: {e}");
            return EX_USAGE;
        }
    };
    match flags.mode {
        Mode::ListQueue => return super::queue::mailq(cfg),
        Mode::RunQueue => return super::queue::main(cfg, &["flush".to_string()]),
        Mode::SmtpOnStdin => return smtp_on_stdin(&cfg),
        Mode::Deliver => {}
    }
    let stdin = io::stdin();
    let mut input = BufReader::new(stdin.lock());
    match inject(&cfg, &flags, &mut input) {
        Ok(name) => {
            if flags.verbose {
                eprintln!("sendmail: queued as {}", name);
            }
            super::queue::signal_daemon(&cfg, libc::SIGUSR2);
            EX_OK
        }
        Err((code, msg)) => {
            eprintln!("sendmail: {msg}");
            code
        }
    }
}

/// The server session's questions for a local `-bs` client: any
/// well-formed recipient is taken and written to the drop as the client
/// gave it; the daemon decides where it goes when it imports the drop (no
/// destination is decided here). MAIL is refused below `min_free_space`.
struct LocalInjection<'a> {
    cfg: &'a Config,
}

/// `min_free_space` for a drop (one statvfs: this process sends one message).
fn spool_has_room(cfg: &Config) -> bool {
    crate::spool::space::has_room(&cfg.spool_dir, cfg.min_free_space)
}

impl crate::smtp::server::Policy for LocalInjection<'_> {
    fn check_mail(&self) -> Result<(), crate::smtp::reply::Reply> {
        if spool_has_room(self.cfg) {
            Ok(())
        } else {
            Err(crate::smtp::reply::NO_SPACE)
        }
    }
    fn check_recipient(
        &self,
        _rcpt: &Address,
        _relay_allowed: bool,
    ) -> Result<Vec<crate::delivery::Destination>, crate::smtp::reply::Reply> {
        Ok(Vec::new())
    }
}

/// `sendmail -bs`: an SMTP dialog on stdin/stdout (blocking is fine here:
/// this is a short-lived client process, not the daemon's loop).
fn smtp_on_stdin(cfg: &Config) -> i32 {
    use crate::rewrite::header::HeaderRewriter;
    use crate::smtp::server::{Event, ListenerKind, ServerSession};
    use std::io::Write;
    use std::time::Instant;

    let session_cfg = crate::daemon::session_config(cfg, false, false);
    let peer = std::net::IpAddr::from([127, 0, 0, 1]);
    let _ = crate::spool::Spool::open(&cfg.spool_dir, cfg.spool_sync);
    let mut s = ServerSession::new(session_cfg, ListenerKind::Relay, peer, true, Instant::now());
    let mut stdin = io::stdin().lock();
    let mut stdout = io::stdout().lock();
    let mut drop: Option<DropWriter> = None;
    // Bare `To: root` never leaves the host unqualified (as for `inject`).
    let mut qualifier = HeaderRewriter::qualifier(&cfg.qualify_domain);
    let mut qualified: Vec<u8> = Vec::new();
    let mut input: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut eof = false;
    let mut queued = 0;
    loop {
        let used = s.handle_input(&input, Instant::now(), &LocalInjection { cfg });
        input.drain(..used.min(input.len()));
        if let Some(d) = drop.as_mut() {
            qualified.clear();
            qualifier.push(s.body(), &mut qualified);
            if !qualified.is_empty() && d.write(&qualified).is_err() {
                s.spool_failed(crate::smtp::reply::LOCAL_ERROR);
            }
        }
        s.clear_body();
        while let Some(ev) = s.poll_event() {
            match ev {
                Event::DataStart => {
                    let env = s.envelope().cloned().unwrap_or_default();
                    let sender = env.sender.map(|a| a.to_string()).unwrap_or_default();
                    let rcpts: Vec<String> = env.recipients.iter().map(|a| a.to_string()).collect();
                    match DropWriter::create(&cfg.spool_dir, &sender, &rcpts) {
                        Ok(d) => {
                            drop = Some(d);
                            qualifier = HeaderRewriter::qualifier(&cfg.qualify_domain);
                            let now = unix_now();
                            s.data_started("(local)", &rfc5322_date(now as i64, 0));
                        }
                        Err(e) => s.data_refused((&e).into()),
                    }
                }
                Event::Commit => {
                    // What the session gave since the last write (`BDAT 0
                    // LAST` ends a message inside `data_started`), then a
                    // header without a body: the last field is still held.
                    qualified.clear();
                    qualifier.push(s.body(), &mut qualified);
                    s.clear_body();
                    qualifier.finish(&mut qualified);
                    if let Some(d) = drop.as_mut() {
                        if !qualified.is_empty() && d.write(&qualified).is_err() {
                            drop = None;
                        }
                    }
                    let r = match drop.take().map(|d| d.commit(cfg.spool_sync)) {
                        Some(Ok(path)) => {
                            queued += 1;
                            Ok(path
                                .file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default())
                        }
                        _ => Err(crate::smtp::reply::LOCAL_ERROR),
                    };
                    match r {
                        Ok(name) => s.committed(Ok(&name)),
                        Err(e) => s.committed(Err(e)),
                    }
                }
                Event::Abort => drop = None,
                Event::StartTls => {}
                // AUTH is not offered here.
                Event::Authenticate(_) => {
                    s.auth_verdict(crate::smtp::server::AuthVerdict::Bad, Instant::now())
                }
            }
        }
        if !s.output().is_empty() {
            if stdout
                .write_all(s.output())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return EX_TEMPFAIL;
            }
            let n = s.output().len();
            s.consume_output(n);
        }
        if s.is_closing() || (eof && used == 0) {
            break;
        }
        if used == 0 || input.is_empty() {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    eof = true;
                    s.connection_lost();
                }
                Ok(n) => input.extend_from_slice(buf.get(..n).unwrap_or_default()),
            }
        }
    }
    if queued > 0 {
        super::queue::signal_daemon(cfg, libc::SIGUSR2);
    }
    EX_OK
}

/// Reads the message and writes the drop file; returns its name.
pub fn inject(
    cfg: &Config,
    flags: &Flags,
    input: &mut dyn BufRead,
) -> Result<String, (i32, String)> {
    let sender = envelope_sender(cfg, flags.sender.as_deref());
    if !sender.is_empty() && Address::parse_mailbox(&sender).is_err() {
        return Err((EX_DATAERR, format!("bad sender address {sender:?}")));
    }
    // The header block, bounded.
    let mut header = Vec::new();
    let mut first_body_line: Option<Vec<u8>> = None;
    let mut ended_by_dot = false;
    loop {
        let mut line = Vec::new();
        let n = input
            .take((MAX_HEADER_BLOCK + 1) as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| (EX_TEMPFAIL, format!("reading input: {e}")))?;
        if n == 0 {
            break;
        }
        if !flags.ignore_dots && is_lone_dot(&line) {
            ended_by_dot = true;
            break;
        }
        if line == b"\n" || line == b"\r\n" {
            first_body_line = Some(line);
            break;
        }
        let is_header = line.first().is_some_and(|&c| c == b' ' || c == b'\t')
            || line
                .iter()
                .position(|&c| c == b':')
                .and_then(|p| line.get(..p))
                .is_some_and(|name| !name.is_empty() && name.iter().all(|&c| c.is_ascii_graphic()));
        if !is_header {
            // No header block: the message starts with its body.
            first_body_line = Some(line);
            break;
        }
        header.extend_from_slice(&line);
        if header.len() > MAX_HEADER_BLOCK {
            return Err((EX_DATAERR, "header block too large".into()));
        }
    }
    let fields = split_fields(&header);
    let mut recipients = flags.recipients.clone();
    if flags.from_headers {
        for (name, value) in &fields {
            if ["to", "cc", "bcc"].contains(&name.to_ascii_lowercase().as_str()) {
                recipients.extend(header_addresses(value));
            }
        }
    }
    let mut rcpts = Vec::new();
    for r in recipients.iter().flat_map(|r| r.split(',')) {
        let r = r.trim().trim_start_matches('<').trim_end_matches('>');
        if r.is_empty() {
            continue;
        }
        let full = qualify(cfg, r);
        if Address::parse_mailbox(&full).is_err() {
            return Err((EX_DATAERR, format!("bad recipient address {r:?}")));
        }
        if !rcpts.contains(&full) {
            rcpts.push(full);
        }
    }
    if rcpts.is_empty() {
        return Err((EX_USAGE, "no recipients given".into()));
    }
    // The spool may not exist yet (the daemon never ran, or is starting).
    let _ = crate::spool::Spool::open(&cfg.spool_dir, cfg.spool_sync);
    if !spool_has_room(cfg) {
        return Err((
            EX_TEMPFAIL,
            format!(
                "{} has less than min_free_space ({} bytes) free; try again later",
                cfg.spool_dir.display(),
                cfg.min_free_space
            ),
        ));
    }
    let mut drop = DropWriter::create(&cfg.spool_dir, &sender, &rcpts).map_err(|e| {
        // A full disk is temporary; anything else needs the admin.
        let code = match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => EX_TEMPFAIL,
            _ => EX_CANTCREAT,
        };
        (
            code,
            format!("cannot write to {}/drop: {e}", cfg.spool_dir.display()),
        )
    })?;
    let io_err = |e: io::Error| (EX_TEMPFAIL, format!("writing the drop file: {e}"));
    // Header fix-ups, then the header without Bcc (when -t), then the body.
    let has = |n: &str| fields.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    let now = unix_now();
    let mut fix = String::new();
    if !has("from") {
        match &flags.full_name {
            Some(name) => fix.push_str(&format!("From: {} <{sender}>\n", quote_name(name))),
            None => fix.push_str(&format!(
                "From: {}\n",
                if sender.is_empty() {
                    format!("MAILER-DAEMON@{}", cfg.hostname)
                } else {
                    sender.clone()
                }
            )),
        }
    }
    if !has("date") {
        fix.push_str(&format!("Date: {}\n", rfc5322_date(now as i64, 0)));
    }
    if !has("message-id") {
        let id = new_message_id(cfg, now).map_err(io_err)?;
        fix.push_str(&format!("Message-ID: {id}\n"));
    }
    let mut out = Counted {
        drop: &mut drop,
        written: 0,
        max: cfg.max_message_size,
    };
    out.write(fix.as_bytes())?;
    for (name, raw) in raw_fields(&header) {
        if flags.from_headers && name.eq_ignore_ascii_case("bcc") {
            continue;
        }
        // Bare `To: root` never leaves the host unqualified.
        match crate::rewrite::header::qualify_field(raw, &cfg.qualify_domain) {
            Some(qualified) => out.write(&qualified)?,
            None => out.write(raw)?,
        }
    }
    // The header loop reads whole lines but for one over the cap, which
    // can only be the first body line.
    let first_line_ended = first_body_line.as_ref().is_none_or(|l| l.ends_with(b"\n"));
    if let Some(line) = first_body_line {
        if line != b"\n" && line != b"\r\n" {
            out.write(b"\n")?;
        }
        out.write(&line)?;
    } else {
        out.write(b"\n")?;
    }
    if !ended_by_dot {
        // Reads are capped, so a long line comes in pieces: only a piece
        // that starts a line can be the lone dot that ends the message.
        let mut at_line_start = first_line_ended;
        let mut line = Vec::new();
        loop {
            line.clear();
            // Lines are read with a cap so a newline-free input cannot grow memory.
            let n = input
                .take(64 * 1024)
                .read_until(b'\n', &mut line)
                .map_err(|e| (EX_TEMPFAIL, format!("reading input: {e}")))?;
            if n == 0 {
                break;
            }
            if !flags.ignore_dots && at_line_start && is_lone_dot(&line) {
                break;
            }
            at_line_start = line.ends_with(b"\n");
            out.write(&line)?;
        }
    }
    let path = drop.commit(cfg.spool_sync).map_err(io_err)?;
    Ok(path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default())
}

/// The envelope sender for `-f`/`-r` (`given`), else the invoking user:
/// unqualified names get `@qualify_domain`; an empty one is the null sender.
pub fn envelope_sender(cfg: &Config, given: Option<&str>) -> String {
    match given {
        Some("") => String::new(),
        Some(s) if s.contains('@') => s.to_string(),
        Some(s) => format!("{s}@{}", cfg.qualify_domain),
        None => format!("{}@{}", invoking_user(), cfg.qualify_domain),
    }
}

/// A recipient as written to the envelope: unqualified names get
/// `@qualify_domain`.
pub fn qualify(cfg: &Config, rcpt: &str) -> String {
    if rcpt.contains('@') {
        rcpt.to_string()
    } else {
        format!("{rcpt}@{}", cfg.qualify_domain)
    }
}

/// A fresh `<...>` Message-ID for mail submitted at `now` (unix seconds).
pub fn new_message_id(cfg: &Config, now: u64) -> io::Result<String> {
    let unique = crate::random::u32()?;
    Ok(format!(
        "<{now}.{}.{unique}@{}>",
        std::process::id(),
        cfg.hostname
    ))
}

/// The drop file's message, counted as it is written: the daemon applies
/// `max_message_size` to the same octets (see `daemon::drop`), so what
/// sendmail accepts is imported.
struct Counted<'a> {
    drop: &'a mut DropWriter,
    written: u64,
    max: u64,
}

impl Counted<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), (i32, String)> {
        self.written = self.written.saturating_add(bytes.len() as u64);
        if self.written > self.max {
            return Err((
                EX_DATAERR,
                format!("message exceeds max_message_size ({} bytes)", self.max),
            ));
        }
        self.drop
            .write(bytes)
            .map_err(|e| (EX_TEMPFAIL, format!("writing the drop file: {e}")))
    }
}

fn is_lone_dot(line: &[u8]) -> bool {
    line == b".\n" || line == b".\r\n" || line == b"."
}

/// (name, value) of each header field, unfolded.
fn split_fields(header: &[u8]) -> Vec<(String, String)> {
    raw_fields(header)
        .into_iter()
        .map(|(name, raw)| {
            let text = String::from_utf8_lossy(raw);
            let value = text.split_once(':').map_or("", |(_, v)| v);
            (name, value.replace(['\r', '\n'], " ").trim().to_string())
        })
        .collect()
}

/// Each field's name and raw bytes (with continuation lines).
fn raw_fields(header: &[u8]) -> Vec<(String, &[u8])> {
    let mut out: Vec<(String, &[u8])> = Vec::new();
    // The current field is header[start..i]; i is where the next line starts.
    let mut start = 0;
    let mut i = 0;
    for line in header.split_inclusive(|&b| b == b'\n') {
        let cont = matches!(line.first(), Some(b' ' | b'\t'));
        if !cont && i > start {
            if let Some(raw) = header.get(start..i) {
                out.push((field_name(raw), raw));
            }
            start = i;
        }
        i += line.len();
    }
    if let Some(raw) = header.get(start..).filter(|raw| !raw.is_empty()) {
        out.push((field_name(raw), raw));
    }
    out
}

fn field_name(raw: &[u8]) -> String {
    let name = raw
        .iter()
        .position(|&b| b == b':')
        .and_then(|p| raw.get(..p))
        .unwrap_or_default();
    String::from_utf8_lossy(name).trim().to_string()
}

/// Addresses in a To/Cc/Bcc value: `a@b, "Name" <c@d>, e@f (comment)`.
pub fn header_addresses(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth_quote = false;
    let mut part = String::new();
    let mut parts = Vec::new();
    for c in value.chars() {
        match c {
            '"' => {
                depth_quote = !depth_quote;
                part.push(c);
            }
            ',' if !depth_quote => parts.push(std::mem::take(&mut part)),
            _ => part.push(c),
        }
    }
    parts.push(part);
    for p in parts {
        let p = p.trim();
        // Inside the last `<...>`: the text after the last `<` holds the
        // last `>` exactly when that `>` comes after the `<`.
        let addr = match p
            .rsplit_once('<')
            .and_then(|(_, rest)| rest.rsplit_once('>'))
        {
            Some((inside, _)) => inside.trim().to_string(),
            None => p
                .split_whitespace()
                .find(|w| w.contains('@'))
                .unwrap_or(p)
                .to_string(),
        };
        if !addr.is_empty() {
            out.push(addr);
        }
    }
    out
}

pub fn quote_name(name: &str) -> String {
    let clean: String = name.chars().filter(|c| !c.is_control()).collect();
    if clean.chars().all(|c| c.is_ascii_alphanumeric() || c == ' ') {
        clean
    } else {
        format!("\"{}\"", clean.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

fn invoking_user() -> String {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if let Some(e) = crate::system::passwd_entries()
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.uid == uid)
    {
        return e.name;
    }
    if uid == 0 {
        "root".into()
    } else {
        format!("uid{uid}")
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn flags() {
        let f = parse_flags(&args(
            "-t -oi -f root@x -F Cron -odb -oem -B 8BITMIME a@b c",
        ))
        .unwrap();
        assert!(f.from_headers && f.ignore_dots);
        assert_eq!(f.sender.as_deref(), Some("root@x"));
        assert_eq!(f.full_name.as_deref(), Some("Cron"));
        assert_eq!(f.recipients, vec!["a@b", "c"]);
        let f = parse_flags(&args("-fme@x -i -- -notaflag")).unwrap();
        assert_eq!(f.sender.as_deref(), Some("me@x"));
        assert_eq!(f.recipients, vec!["-notaflag"]);
        assert_eq!(parse_flags(&args("-bp")).unwrap().mode, Mode::ListQueue);
        assert_eq!(parse_flags(&args("-q")).unwrap().mode, Mode::RunQueue);
        assert!(parse_flags(&args("-X")).is_err());
        assert!(parse_flags(&args("-f")).is_err());
    }

    #[test]
    fn addresses_in_headers() {
        assert_eq!(
            header_addresses("a@b.test, \"Doe, J\" <j@d.test>, x@y.test (X)"),
            vec!["a@b.test", "j@d.test", "x@y.test"]
        );
    }

    /// Injects `input` into a fresh spool; returns the drop file's bytes.
    fn inject_into_temp_spool(tag: &str, flags: &Flags, input: &[u8]) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("tern-sendmail-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = Config {
            spool_dir: dir.clone(),
            spool_sync: false,
            hostname: "host.test".into(),
            qualify_domain: "host.test".into(),
            ..Config::default()
        };
        let name = inject(&cfg, flags, &mut io::Cursor::new(input)).expect("inject");
        let bytes = std::fs::read(dir.join("drop").join(name)).expect("drop file");
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    }

    #[test]
    fn a_dot_inside_a_long_line_does_not_end_the_message() {
        // Lines are read 64 KiB at a time: a line whose piece after the
        // cap is ".\n" used to end the message there, silently dropping
        // the rest (sendmail still exited 0).
        let flags = parse_flags(&args("a@b.test")).unwrap();
        // The same for a first body line longer than the header block's cap.
        for (first, len) in [
            (b"Subject: x\n\n".as_slice(), 64 * 1024),
            (b"", MAX_HEADER_BLOCK + 1),
        ] {
            let mut input = first.to_vec();
            input.resize(first.len() + len, b'x');
            input.extend_from_slice(b".\nafter the dot\n");
            let drop = inject_into_temp_spool("longdot", &flags, &input);
            let text = String::from_utf8_lossy(&drop);
            assert!(
                text.contains("x.\nafter the dot\n"),
                "{:?}",
                text.get(text.len() - 40..)
            );
        }
        // A real lone dot still ends it.
        let drop = inject_into_temp_spool("dot", &flags, b"Subject: x\n\nbody\n.\nnot sent\n");
        let text = String::from_utf8_lossy(&drop);
        assert!(
            text.ends_with("body\n") && !text.contains("not sent"),
            "{text:?}"
        );
    }

    #[test]
    fn fields() {
        let h = b"To: a@b\nSubject: x\n  continued\nBcc: c@d\n";
        let f = raw_fields(h);
        assert_eq!(f.len(), 3);
        assert_eq!(f[1].1, b"Subject: x\n  continued\n");
        assert_eq!(split_fields(h)[1].1, "x   continued");
    }
}
