//! Addresses in header fields: the streaming `From:`/`Sender:` rewriter
//! for the outbound body, and the qualification of bare names in the
//! address fields of locally submitted mail.
//!
//! RFC 5322 §3.4 address lists are scanned, not re-printed: display
//! names, comments, quoting, group syntax (`name: a, b;`) and folding are
//! kept byte for byte, and only each addr-spec's own octets are replaced
//! (`Cron Daemon <root@router.lan>` → `Cron Daemon <me@example.com>`,
//! `root (Cron Daemon)` → `me@example.com (Cron Daemon)`). A value that
//! does not scan (an unterminated quote, comment or `<`) is left whole, as
//! is a mailbox whose addr-spec has inner spaces or comments (obsolete
//! forms).
//!
//! [`HeaderRewriter`] is sans-IO, fed chunks split anywhere: header fields
//! are held (continuation lines included) up to [`MAX_REWRITE_FIELD`]
//! octets; a longer field is passed on unchanged (and logged when it is a
//! `From:`/`Sender:`). After the empty line the body passes through
//! untouched, with no copy per line.

use super::{is_unqualified_name, SenderMap};

/// Longest header field held for rewriting (the MIME downgrade's cap).
pub const MAX_REWRITE_FIELD: usize = crate::smtp::mime7bit::MAX_FIELD;

/// Fields whose addresses are the sender's (rewritten when mail leaves).
const SENDER_FIELDS: &[&str] = &["from", "sender"];
/// Fields whose bare names get `@qualify_domain` (locally submitted mail).
pub const QUALIFIED_FIELDS: &[&str] = &["from", "to", "cc", "bcc", "sender", "reply-to"];

/// Rewrites every addr-spec of an address-list value (raw octets, folding
/// included). `map` gets the addr-spec as written and returns its
/// replacement, or `None` to keep it. `None`: nothing changed.
pub fn rewrite_addresses(
    value: &[u8],
    map: &mut dyn FnMut(&str) -> Option<String>,
) -> Option<Vec<u8>> {
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut seg_start = 0;
    let mut angle: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < value.len() {
        let b = *value.get(i)?;
        match b {
            b'"' => i = skip_quoted(value, i)?,
            b'(' => i = skip_comment(value, i)?,
            b'<' => {
                let end = skip_angle(value, i)?;
                angle = Some((i + 1, end - 1));
                i = end;
            }
            b':' if angle.is_none() => {
                // A group's display name ends here.
                seg_start = i + 1;
                i += 1;
            }
            b',' | b';' => {
                segment(value, seg_start, i, angle, map, &mut edits);
                seg_start = i + 1;
                angle = None;
                i += 1;
            }
            _ => i += 1,
        }
    }
    segment(value, seg_start, value.len(), angle, map, &mut edits);
    if edits.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(value.len() + 64);
    let mut copied = 0;
    for (start, end, new) in edits {
        out.extend_from_slice(value.get(copied..start)?);
        out.extend_from_slice(new.as_bytes());
        copied = end;
    }
    out.extend_from_slice(value.get(copied..)?);
    Some(out)
}

/// One mailbox `value[start..end]`: its addr-spec, replaced if `map` says.
fn segment(
    value: &[u8],
    start: usize,
    end: usize,
    angle: Option<(usize, usize)>,
    map: &mut dyn FnMut(&str) -> Option<String>,
    edits: &mut Vec<(usize, usize, String)>,
) {
    let span = match angle {
        Some((a, b)) => trim_span(value, a, b),
        None => bare_span(value, start, end),
    };
    let Some((a, b)) = span else {
        return;
    };
    let Some(text) = value.get(a..b).and_then(|t| std::str::from_utf8(t).ok()) else {
        return;
    };
    // A source route (`<@a,@b:x@y>`) or inner spaces: left alone.
    if text.is_empty() || text.contains([':', ' ', '\t', '\r', '\n']) {
        return;
    }
    if let Some(new) = map(text) {
        edits.push((a, b, new));
    }
}

fn is_wsp(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// `value[a..b]` without surrounding white space.
fn trim_span(value: &[u8], mut a: usize, mut b: usize) -> Option<(usize, usize)> {
    while a < b && value.get(a).is_some_and(|&c| is_wsp(c)) {
        a += 1;
    }
    while b > a && value.get(b - 1).is_some_and(|&c| is_wsp(c)) {
        b -= 1;
    }
    (a < b).then_some((a, b))
}

/// The addr-spec of a mailbox without `<>`: its one run of octets outside
/// white space and comments; `None` when there are several (a display
/// name without an angle address, or an obsolete form).
fn bare_span(value: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    let mut run: Option<(usize, usize)> = None;
    let mut i = start;
    while i < end {
        let b = *value.get(i)?;
        if is_wsp(b) {
            i += 1;
            continue;
        }
        let next = match b {
            b'(' => {
                i = skip_comment(value, i)?;
                continue;
            }
            b'"' => skip_quoted(value, i)?,
            _ => i + 1,
        };
        run = match run {
            None => Some((i, next)),
            Some((a, b)) if b == i => Some((a, next)),
            Some(_) => return None,
        };
        i = next;
    }
    run
}

/// Index after the quoted string starting at `value[i]` (`"`).
fn skip_quoted(value: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match value.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// Index after the (nested) comment starting at `value[i]` (`(`).
fn skip_comment(value: &[u8], i: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut j = i;
    loop {
        match value.get(j)? {
            b'\\' => j += 1,
            b'(' => depth += 1,
            b')' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return Some(j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
}

/// Index after the `>` closing the angle address at `value[i]` (`<`).
fn skip_angle(value: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match value.get(j)? {
            b'"' => j = skip_quoted(value, j)?,
            b'>' => return Some(j + 1),
            b'<' => return None,
            _ => j += 1,
        }
    }
}

/// The field's name (before the first `:`), trimmed; `None` without `:`.
fn field_name(raw: &[u8]) -> Option<&[u8]> {
    let colon = raw.iter().position(|&b| b == b':')?;
    let name = raw.get(..colon)?;
    let start = name.iter().position(|&b| !is_wsp(b)).unwrap_or(name.len());
    let end = name
        .iter()
        .rposition(|&b| !is_wsp(b))
        .map_or(start, |e| e + 1);
    name.get(start..end)
}

fn name_in(raw: &[u8], names: &[&str]) -> bool {
    field_name(raw).is_some_and(|n| names.iter().any(|w| n.eq_ignore_ascii_case(w.as_bytes())))
}

/// Rewrites the addresses of a whole raw field (`Name: value`, folding
/// included) when its name is one of `names`; `None`: unchanged.
pub fn rewrite_field(
    raw: &[u8],
    names: &[&str],
    map: &mut dyn FnMut(&str) -> Option<String>,
) -> Option<Vec<u8>> {
    if !name_in(raw, names) {
        return None;
    }
    let colon = raw.iter().position(|&b| b == b':')?;
    let (head, value) = raw.split_at_checked(colon + 1)?;
    let new = rewrite_addresses(value, map)?;
    let mut out = head.to_vec();
    out.extend_from_slice(&new);
    Some(out)
}

/// Qualifies bare names (`root`) in `From/To/Cc/Bcc/Sender/Reply-To` with
/// `domain`; `None`: unchanged.
pub fn qualify_field(raw: &[u8], domain: &str) -> Option<Vec<u8>> {
    rewrite_field(raw, QUALIFIED_FIELDS, &mut |t| {
        is_unqualified_name(t).then(|| format!("{t}@{domain}"))
    })
}

/// What a [`HeaderRewriter`] does to the fields it holds.
#[derive(Debug)]
enum FieldRewrite {
    /// `From:`/`Sender:` addresses through the sender map (mail leaving
    /// the host).
    Senders(SenderMap),
    /// Bare names in the address fields get `@domain` ([`qualify_field`];
    /// `sendmail -bs`, whose header arrives in pieces).
    Qualify(String),
}

/// The streaming header rewriter: feed [`HeaderRewriter::push`] with the
/// message in chunks of any size, then call [`HeaderRewriter::finish`].
/// Rewrites `From:`/`Sender:` ([`HeaderRewriter::new`]) or qualifies the
/// address fields ([`HeaderRewriter::qualifier`]); the body passes
/// through.
#[derive(Debug)]
pub struct HeaderRewriter {
    what: FieldRewrite,
    /// Past the empty line: everything passes through.
    body: bool,
    /// The field being read (with its continuation lines so far).
    field: Vec<u8>,
    /// The current field is too long: its octets go straight out.
    passthrough: bool,
    /// The next octet starts a line.
    at_line_start: bool,
    /// Octets on the current line so far, and whether the first was CR.
    line_len: usize,
    line_starts_cr: bool,
}

impl HeaderRewriter {
    pub fn new(map: SenderMap) -> HeaderRewriter {
        HeaderRewriter::with(FieldRewrite::Senders(map))
    }

    /// Qualifies bare names in `From/To/Cc/Bcc/Sender/Reply-To` with
    /// `domain`.
    pub fn qualifier(domain: &str) -> HeaderRewriter {
        HeaderRewriter::with(FieldRewrite::Qualify(domain.to_string()))
    }

    fn with(what: FieldRewrite) -> HeaderRewriter {
        HeaderRewriter {
            what,
            body: false,
            field: Vec::new(),
            passthrough: false,
            at_line_start: true,
            line_len: 0,
            line_starts_cr: false,
        }
    }

    /// Takes a chunk, appending what can be passed on to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut rest = input;
        while let Some((&b, tail)) = rest.split_first() {
            if self.body {
                out.extend_from_slice(rest);
                return;
            }
            if self.at_line_start {
                self.at_line_start = false;
                self.line_len = 0;
                self.line_starts_cr = b == b'\r';
                if b != b' ' && b != b'\t' {
                    self.flush_field(out);
                }
            }
            if self.passthrough {
                out.push(b);
            } else {
                self.field.push(b);
                if self.field.len() > MAX_REWRITE_FIELD {
                    if matches!(self.what, FieldRewrite::Senders(_))
                        && name_in(&self.field, SENDER_FIELDS)
                    {
                        log::warn!(
                            "sender rewrite: a header field longer than \
                             {MAX_REWRITE_FIELD} octets is passed on unchanged"
                        );
                    }
                    out.append(&mut self.field);
                    self.passthrough = true;
                }
            }
            if b == b'\n' {
                let blank = self.line_len == 0 || (self.line_len == 1 && self.line_starts_cr);
                self.at_line_start = true;
                if blank {
                    self.flush_field(out);
                    self.body = true;
                }
            } else {
                self.line_len += 1;
            }
            rest = tail;
        }
    }

    /// The end of the message: what is still held.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.flush_field(out);
    }

    fn flush_field(&mut self, out: &mut Vec<u8>) {
        self.passthrough = false;
        if self.field.is_empty() {
            return;
        }
        let new = match &self.what {
            FieldRewrite::Senders(map) => rewrite_field(&self.field, SENDER_FIELDS, &mut |t| {
                map.rewrite_sender(t).map(|a| a.to_string())
            }),
            FieldRewrite::Qualify(domain) => qualify_field(&self.field, domain),
        };
        match new {
            Some(new) => out.extend_from_slice(&new),
            None => out.extend_from_slice(&self.field),
        }
        self.field.clear();
    }
}
