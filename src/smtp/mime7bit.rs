//! 8bit → 7bit MIME downgrade of a message body, sans-IO and streaming:
//! bytes in (any chunking), bytes out, bounded memory.
//!
//! Why: RFC 6152 §3 forbids sending 8-bit octets to a server that offers
//! neither 8BITMIME nor SMTPUTF8. Like Postfix's SMTP client (its MIME
//! state machine with the 8bit→7bit downgrade), the outbound session runs
//! an 8-bit message through this converter for such a hop, before
//! dot-stuffing; where the message cannot be converted, the recipients fail
//! with 5.6.3 and the sender gets a bounce.
//!
//! What it does (RFC 2045, RFC 2046), entity by entity:
//!
//! | entity (after its header section)                         | becomes |
//! |-----------------------------------------------------------|---------|
//! | leaf with `Content-Transfer-Encoding: 8bit`               | quoted-printable (RFC 2045 §6.7), the header rewritten |
//! | `text/*` leaf without CTE (also the default type); the body of a message without `MIME-Version` | quoted-printable; `MIME-Version: 1.0` added to a non-MIME message, and `Content-Type: text/plain; charset=unknown-8bit` (RFC 1428) when it had none |
//! | `multipart/*` with a boundary, CTE absent, `7bit` or `8bit` | parts converted one by one; `8bit` becomes `7bit` |
//! | `message/rfc822`, CTE absent, `7bit` or `8bit`            | the enclosed message converted (headers, body); `8bit` becomes `7bit` |
//! | anything declared `7bit`, `base64`, `quoted-printable` or unknown | passed through unchanged |
//!
//! Conversion is impossible, and [`Unconvertible`] is returned, for: 8-bit
//! octets in any header field (RFC 2047 encoding would change addresses and
//! is not attempted), `Content-Transfer-Encoding: binary`, 8-bit octets in a
//! part declared 7-bit (or base64, QP, unknown, or `message/partial` and
//! `message/external-body`, which must be 7bit), in a multipart preamble or
//! epilogue, or inside a structure deeper than [`MAX_DEPTH`] multiparts, and
//! header lines longer than [`LINE_BUFFER`]. The caller finds out while
//! streaming (the body is never read twice) and must abort the transaction.
//!
//! How: a state machine over lines. A line is collected in a buffer of at
//! most [`LINE_BUFFER`] octets; a longer body line is handed on in pieces
//! (it cannot be a boundary, so nothing needs all of it), with a trailing
//! CR held back so a CRLF is never split. Per entity, only the
//! `Content-Type` value (up to [`MAX_FIELD`]) and the
//! `Content-Transfer-Encoding` field are kept until the header section
//! ends; the CTE field is written then, after the other fields (the order
//! of different fields carries no meaning). Open multiparts are a stack of
//! boundaries ([`MAX_DEPTH`] × [`MAX_BOUNDARY`]); a delimiter line of any
//! open multipart ends every part inside it (RFC 2046 §5.1.2). Output is
//! the same for any split of the input into chunks.
//!
//! Not done: RFC 2047/2231 header encoding, charset detection (an
//! unlabelled 8-bit body is labelled `unknown-8bit`), base64 for non-text
//! parts (QP is lossless for any 8bit-declared line data), and line
//! folding of over-long lines in parts that are passed through.

/// One line: 998 octets and CRLF (RFC 5321 §4.5.3.1.6). Longer body lines
/// are processed in pieces; longer header lines are refused.
pub const LINE_BUFFER: usize = 1000;
/// The longest `Content-Type` value kept for parsing (a boundary parameter
/// and a few others fit many times).
pub const MAX_FIELD: usize = 4096;
/// The longest `Content-Transfer-Encoding` field kept (folded lines and
/// all); it holds one token.
pub const MAX_CTE_FIELD: usize = 2 * LINE_BUFFER;
/// Multiparts nested deeper than this are passed through unconverted.
pub const MAX_DEPTH: usize = 32;
/// The longest boundary recognised (RFC 2046 §5.1.1 allows 70; some
/// generators exceed it).
pub const MAX_BOUNDARY: usize = 200;
/// Encoded characters per quoted-printable line before the soft break `=`
/// (RFC 2045 §6.7 rule 5: at most 76 with the `=`).
pub const QP_LINE: usize = 75;

/// Why a message cannot be sent as 7-bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unconvertible(pub &'static str);

impl std::fmt::Display for Unconvertible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

const EIGHT_BIT_HEADER: Unconvertible = Unconvertible("8-bit octets in a header field");
const BINARY: Unconvertible = Unconvertible("Content-Transfer-Encoding: binary");
const LONG_HEADER: Unconvertible = Unconvertible("header line too long");
const LONG_FIELD: Unconvertible = Unconvertible("MIME header field too long");
const EIGHT_BIT_7BIT_PART: Unconvertible =
    Unconvertible("8-bit octets in a part that cannot be re-encoded");
const EIGHT_BIT_PREAMBLE: Unconvertible =
    Unconvertible("8-bit octets in a multipart preamble or epilogue");

/// Which header field the current header line belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Other,
    ContentType,
    Cte,
}

/// An entity's header section being read.
#[derive(Debug, Default)]
struct Headers {
    /// The top of a message (the whole one, or a message/rfc822 part).
    message_top: bool,
    /// Inside multipart/digest: the default type is message/rfc822.
    in_digest: bool,
    field: Option<Field>,
    content_type: Option<Vec<u8>>,
    /// The raw CTE field lines, written at the end of the section.
    cte_raw: Vec<u8>,
    has_cte: bool,
    mime_version: bool,
}

/// Streaming quoted-printable encoder for line data.
#[derive(Debug, Default)]
struct Qp {
    col: usize,
    /// A space or tab not yet known to be trailing.
    pending: Option<u8>,
}

impl Qp {
    fn put(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        if self.col + piece.len() > QP_LINE {
            out.extend_from_slice(b"=\r\n");
            self.col = 0;
        }
        if self.col == 0 && piece == b"-" {
            // A line starting "--" could read as a boundary delimiter.
            out.extend_from_slice(b"=2D");
            self.col = 3;
            return;
        }
        out.extend_from_slice(piece);
        self.col += piece.len();
    }

    fn encoded(&mut self, b: u8, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let hi = HEX.get(usize::from(b >> 4)).copied().unwrap_or(b'0');
        let lo = HEX.get(usize::from(b & 0xF)).copied().unwrap_or(b'0');
        self.put(&[b'=', hi, lo], out);
    }

    fn flush_pending(&mut self, trailing: bool, out: &mut Vec<u8>) {
        if let Some(ws) = self.pending.take() {
            if trailing {
                self.encoded(ws, out);
            } else {
                self.put(&[ws], out);
            }
        }
    }

    /// Line content (no line end).
    fn content(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        for &b in bytes {
            self.flush_pending(false, out);
            match b {
                b' ' | b'\t' => self.pending = Some(b),
                b'=' => self.encoded(b, out),
                0x21..=0x7E => self.put(&[b], out),
                _ => self.encoded(b, out),
            }
        }
    }

    /// A hard line break (CRLF in the input).
    fn line_end(&mut self, out: &mut Vec<u8>) {
        self.flush_pending(true, out);
        out.extend_from_slice(b"\r\n");
        self.col = 0;
    }

    /// The end of the encoded body without a final line break.
    fn finish(&mut self, out: &mut Vec<u8>) {
        self.flush_pending(true, out);
    }
}

/// What the lines after a header section are.
#[derive(Debug)]
enum Mode {
    Headers(Headers),
    /// Re-encoded as quoted-printable.
    Qp(Qp),
    /// Passed through; 8-bit octets are an error.
    Pass,
    /// Multipart preamble or epilogue.
    Between,
}

#[derive(Debug)]
struct Multipart {
    boundary: Vec<u8>,
    digest: bool,
}

/// The converter: feed [`Downgrade::push`] with the message, then call
/// [`Downgrade::finish`].
#[derive(Debug)]
pub struct Downgrade {
    line: Vec<u8>,
    /// The current line was partly handed on already (it is long).
    mid_line: bool,
    mode: Mode,
    multiparts: Vec<Multipart>,
    failed: Option<Unconvertible>,
}

impl Default for Downgrade {
    fn default() -> Self {
        Downgrade::new()
    }
}

impl Downgrade {
    pub fn new() -> Downgrade {
        Downgrade {
            line: Vec::with_capacity(LINE_BUFFER),
            mid_line: false,
            mode: Mode::Headers(Headers {
                message_top: true,
                ..Headers::default()
            }),
            multiparts: Vec::new(),
            failed: None,
        }
    }

    /// Converts a chunk, appending the 7-bit form to `out`. After an error
    /// every later call returns it again.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Unconvertible> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let r = self.push_inner(input, out);
        if let Err(e) = r {
            self.failed = Some(e);
        }
        r
    }

    /// The end of the message: the last line, if it has no line end.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), Unconvertible> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let line = std::mem::take(&mut self.line);
        let r = self.last_line(&line, out);
        if let Err(e) = r {
            self.failed = Some(e);
        }
        r
    }

    fn push_inner(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Unconvertible> {
        while !input.is_empty() {
            let room = LINE_BUFFER.saturating_sub(self.line.len());
            let window = input.get(..room.min(input.len())).unwrap_or(input);
            match window.iter().position(|&b| b == b'\n') {
                Some(lf) => {
                    let (head, _) = input.split_at(lf + 1);
                    self.line.extend_from_slice(head);
                    input = input.get(lf + 1..).unwrap_or(&[]);
                    let line = std::mem::take(&mut self.line);
                    self.complete_line(&line, out)?;
                    self.line = line;
                    self.line.clear();
                }
                None => {
                    self.line.extend_from_slice(window);
                    input = input.get(window.len()..).unwrap_or(&[]);
                    if self.line.len() >= LINE_BUFFER {
                        self.long_line_piece(out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The line buffer is full without a line end: hand on all of it but a
    /// trailing CR (which may start the CRLF).
    fn long_line_piece(&mut self, out: &mut Vec<u8>) -> Result<(), Unconvertible> {
        if matches!(self.mode, Mode::Headers(_)) {
            return Err(LONG_HEADER);
        }
        let keep_cr = self.line.last() == Some(&b'\r');
        let piece_len = self.line.len() - usize::from(keep_cr);
        let line = std::mem::take(&mut self.line);
        let piece = line.get(..piece_len).unwrap_or(&[]);
        self.body_content(piece, out)?;
        self.mid_line = true;
        self.line = line;
        self.line.drain(..piece_len);
        Ok(())
    }

    /// A line ending in LF (CRLF in stored mail).
    fn complete_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), Unconvertible> {
        let content = strip_line_end(line);
        if !self.mid_line {
            if let Some((level, close)) = self.delimiter(content) {
                return self.boundary(level, close, content, out);
            }
            if let Mode::Headers(_) = self.mode {
                return self.header_line(line, content, out);
            }
        }
        self.mid_line = false;
        self.body_content(content, out)?;
        self.body_line_end(out);
        Ok(())
    }

    /// The last line without LF.
    fn last_line(&mut self, line: &[u8], out: &mut Vec<u8>) -> Result<(), Unconvertible> {
        if !line.is_empty() {
            if !self.mid_line {
                if let Some((level, close)) = self.delimiter(line) {
                    self.boundary(level, close, line, out)?;
                    // The delimiter went out with a CRLF; nothing follows.
                    return Ok(());
                }
            }
            if matches!(self.mode, Mode::Headers(_)) {
                self.header_line(line, line, out)?;
            } else {
                self.body_content(line, out)?;
            }
        }
        match &mut self.mode {
            Mode::Headers(_) => {
                // A message (or part) with no body: close the section.
                self.end_headers(out)?;
            }
            Mode::Qp(qp) => qp.finish(out),
            Mode::Pass | Mode::Between => {}
        }
        Ok(())
    }

    // ---- bodies ------------------------------------------------------------

    fn body_content(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), Unconvertible> {
        match &mut self.mode {
            Mode::Qp(qp) => qp.content(bytes, out),
            Mode::Pass => {
                if has_eight_bit(bytes) {
                    return Err(EIGHT_BIT_7BIT_PART);
                }
                out.extend_from_slice(bytes);
            }
            Mode::Between => {
                if has_eight_bit(bytes) {
                    return Err(EIGHT_BIT_PREAMBLE);
                }
                out.extend_from_slice(bytes);
            }
            // Unreachable (headers never take pieces); keep it 7-bit.
            Mode::Headers(_) => return Err(LONG_HEADER),
        }
        Ok(())
    }

    fn body_line_end(&mut self, out: &mut Vec<u8>) {
        match &mut self.mode {
            Mode::Qp(qp) => qp.line_end(out),
            _ => out.extend_from_slice(b"\r\n"),
        }
    }

    /// Whether `content` (a line without its end) is a delimiter of an open
    /// multipart: (its level, whether it closes it).
    fn delimiter(&self, content: &[u8]) -> Option<(usize, bool)> {
        let rest = content.strip_prefix(b"--")?;
        self.multiparts
            .iter()
            .enumerate()
            .rev()
            .find_map(|(level, m)| {
                let after = rest.strip_prefix(m.boundary.as_slice())?;
                let (close, pad) = match after.strip_prefix(b"--") {
                    Some(pad) => (true, pad),
                    None => (false, after),
                };
                pad.iter()
                    .all(|&b| b == b' ' || b == b'\t')
                    .then_some((level, close))
            })
    }

    fn boundary(
        &mut self,
        level: usize,
        close: bool,
        content: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Unconvertible> {
        match &mut self.mode {
            // A part whose header section a delimiter cut short.
            Mode::Headers(_) => self.end_headers(out)?,
            Mode::Qp(qp) => qp.finish(out),
            Mode::Pass | Mode::Between => {}
        }
        self.mid_line = false;
        self.multiparts.truncate(level + 1);
        out.extend_from_slice(content);
        out.extend_from_slice(b"\r\n");
        if close {
            self.multiparts.pop();
            self.mode = Mode::Between;
        } else {
            let in_digest = self.multiparts.last().is_some_and(|m| m.digest);
            self.mode = Mode::Headers(Headers {
                in_digest,
                ..Headers::default()
            });
        }
        Ok(())
    }

    // ---- headers -----------------------------------------------------------

    fn header_line(
        &mut self,
        line: &[u8],
        content: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Unconvertible> {
        if has_eight_bit(line) {
            return Err(EIGHT_BIT_HEADER);
        }
        if content.is_empty() {
            self.end_headers(out)?;
            out.extend_from_slice(b"\r\n");
            return Ok(());
        }
        let Mode::Headers(h) = &mut self.mode else {
            return Ok(());
        };
        let continuation = matches!(content.first(), Some(b' ' | b'\t'));
        let value = if continuation {
            content
        } else {
            let name_end = content.iter().position(|&b| b == b':');
            let name = name_end.and_then(|n| content.get(..n)).unwrap_or(&[]);
            let name = trim(name);
            let field = if name.eq_ignore_ascii_case(b"content-type") {
                Field::ContentType
            } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
                Field::Cte
            } else {
                if name.eq_ignore_ascii_case(b"mime-version") {
                    h.mime_version = true;
                }
                Field::Other
            };
            h.field = Some(field);
            match field {
                // A second Content-Type is ignored, as by most readers.
                Field::ContentType if h.content_type.is_some() => h.field = Some(Field::Other),
                Field::ContentType => h.content_type = Some(Vec::new()),
                Field::Cte => h.has_cte = true,
                Field::Other => {}
            }
            name_end.and_then(|n| content.get(n + 1..)).unwrap_or(&[])
        };
        match h.field {
            Some(Field::Cte) => {
                if h.cte_raw.len() + content.len() + 2 > MAX_CTE_FIELD {
                    return Err(LONG_FIELD);
                }
                h.cte_raw.extend_from_slice(content);
                h.cte_raw.extend_from_slice(b"\r\n");
            }
            Some(Field::ContentType) => {
                if let Some(ct) = h.content_type.as_mut() {
                    if ct.len() + value.len() > MAX_FIELD {
                        return Err(LONG_FIELD);
                    }
                    ct.extend_from_slice(value);
                }
                out.extend_from_slice(content);
                out.extend_from_slice(b"\r\n");
            }
            _ => {
                out.extend_from_slice(content);
                out.extend_from_slice(b"\r\n");
            }
        }
        Ok(())
    }

    /// The header section of an entity ended: decide how its body goes,
    /// write the CTE field (and what a non-MIME message lacks).
    fn end_headers(&mut self, out: &mut Vec<u8>) -> Result<(), Unconvertible> {
        let Mode::Headers(h) = std::mem::replace(&mut self.mode, Mode::Pass) else {
            return Ok(());
        };
        let (kind, subtype, boundary) = match &h.content_type {
            Some(v) => parse_content_type(v),
            None if h.in_digest => (b"message".to_vec(), b"rfc822".to_vec(), None),
            None => (b"text".to_vec(), b"plain".to_vec(), None),
        };
        let cte = h
            .has_cte
            .then(|| cte_token(&h.cte_raw))
            .map(|t| t.to_ascii_lowercase());
        let identity = match cte.as_deref() {
            None => Some(false),
            Some(b"7bit") => Some(false),
            Some(b"8bit") => Some(true),
            Some(b"binary") => return Err(BINARY),
            Some(_) => None,
        };
        let (mode, cte_out): (Mode, Option<&[u8]>) = match identity {
            // base64, quoted-printable, unknown: 7-bit by declaration.
            None => (Mode::Pass, None),
            Some(eight) if kind == b"multipart" => match boundary {
                Some(b) if self.multiparts.len() < MAX_DEPTH && b.len() <= MAX_BOUNDARY => {
                    self.multiparts.push(Multipart {
                        boundary: b,
                        digest: subtype == b"digest",
                    });
                    (Mode::Between, eight.then_some(b"7bit".as_slice()))
                }
                _ => (Mode::Pass, None),
            },
            Some(eight) if kind == b"message" && subtype == b"rfc822" => (
                Mode::Headers(Headers {
                    message_top: true,
                    ..Headers::default()
                }),
                eight.then_some(b"7bit".as_slice()),
            ),
            Some(_)
                if kind == b"message" && (subtype == b"partial" || subtype == b"external-body") =>
            {
                (Mode::Pass, None)
            }
            Some(true) => (
                Mode::Qp(Qp::default()),
                Some(b"quoted-printable".as_slice()),
            ),
            Some(false) if !h.has_cte && kind == b"text" => (
                Mode::Qp(Qp::default()),
                Some(b"quoted-printable".as_slice()),
            ),
            Some(false) => (Mode::Pass, None),
        };
        let converted = matches!(mode, Mode::Qp(_));
        if converted && h.message_top && !h.mime_version {
            out.extend_from_slice(b"MIME-Version: 1.0\r\n");
            if h.content_type.is_none() {
                out.extend_from_slice(b"Content-Type: text/plain; charset=unknown-8bit\r\n");
            }
        }
        match cte_out {
            Some(token) => {
                out.extend_from_slice(b"Content-Transfer-Encoding: ");
                out.extend_from_slice(token);
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(&h.cte_raw),
        }
        self.mode = mode;
        Ok(())
    }
}

fn has_eight_bit(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b >= 0x80)
}

fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b'\r' | b'\n', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r' | b'\n'] = s {
        s = rest;
    }
    s
}

/// The token of a `Content-Transfer-Encoding` field (its raw lines).
fn cte_token(raw: &[u8]) -> &[u8] {
    let value = raw
        .iter()
        .position(|&b| b == b':')
        .and_then(|c| raw.get(c + 1..))
        .unwrap_or(&[]);
    let value = trim(value);
    let end = value
        .iter()
        .position(|&b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'(' | b';'))
        .unwrap_or(value.len());
    value.get(..end).unwrap_or(&[])
}

/// `type/subtype; boundary=...` → (type, subtype, boundary), lower-cased
/// type and subtype (RFC 2045 §5.1). Quoted parameter values may hold `;`.
fn parse_content_type(value: &[u8]) -> (Vec<u8>, Vec<u8>, Option<Vec<u8>>) {
    let mut parts = split_params(value).into_iter();
    let full = parts.next().unwrap_or_default();
    let full = trim(&full);
    let (kind, subtype) = match full.iter().position(|&b| b == b'/') {
        Some(slash) => (
            full.get(..slash).unwrap_or(&[]),
            full.get(slash + 1..).unwrap_or(&[]),
        ),
        None => (full, &[][..]),
    };
    let mut boundary = None;
    for p in parts {
        let Some(eq) = p.iter().position(|&b| b == b'=') else {
            continue;
        };
        let name = trim(p.get(..eq).unwrap_or(&[]));
        if name.eq_ignore_ascii_case(b"boundary") {
            let v = unquote(trim(p.get(eq + 1..).unwrap_or(&[])));
            if !v.is_empty() {
                boundary = Some(v);
            }
        }
    }
    (
        trim(kind).to_ascii_lowercase(),
        trim(subtype).to_ascii_lowercase(),
        boundary,
    )
}

/// Splits at `;` outside quoted strings.
fn split_params(value: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    let mut quoted = false;
    let mut escaped = false;
    for &b in value {
        if let Some(cur) = out.last_mut() {
            if escaped {
                escaped = false;
                cur.push(b);
                continue;
            }
            match b {
                b'\\' if quoted => {
                    escaped = true;
                    cur.push(b);
                }
                b'"' => {
                    quoted = !quoted;
                    cur.push(b);
                }
                b';' if !quoted => out.push(Vec::new()),
                _ => cur.push(b),
            }
        }
    }
    out
}

fn unquote(v: &[u8]) -> Vec<u8> {
    match v.strip_prefix(b"\"") {
        Some(inner) => {
            let mut out = Vec::with_capacity(inner.len());
            let mut escaped = false;
            for &b in inner {
                match b {
                    _ if escaped => {
                        escaped = false;
                        out.push(b);
                    }
                    b'\\' => escaped = true,
                    b'"' => break,
                    _ => out.push(b),
                }
            }
            out
        }
        None => v.to_vec(),
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests {
    use super::*;

    fn convert(input: &[u8]) -> Result<Vec<u8>, Unconvertible> {
        let mut d = Downgrade::new();
        let mut out = Vec::new();
        d.push(input, &mut out)?;
        d.finish(&mut out)?;
        Ok(out)
    }

    fn convert_chunked(
        input: &[u8],
        sizes: &mut dyn FnMut() -> usize,
    ) -> Result<Vec<u8>, Unconvertible> {
        let mut d = Downgrade::new();
        let mut out = Vec::new();
        let mut rest = input;
        while !rest.is_empty() {
            let n = sizes().clamp(1, rest.len());
            let (a, b) = rest.split_at(n);
            d.push(a, &mut out)?;
            rest = b;
        }
        d.finish(&mut out)?;
        Ok(out)
    }

    /// RFC 2045 §6.7 decoding: the fuzz driver's, so both check the same way.
    use crate::fuzz_targets::qp_decode;

    fn split_head(msg: &[u8]) -> (&[u8], &[u8]) {
        let p = msg.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (&msg[..p + 2], &msg[p + 4..])
    }

    fn assert_7bit_lines(out: &[u8], max: usize) {
        assert!(out.iter().all(|&b| b < 0x80), "8-bit output");
        for line in out.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(
                line.len() <= max,
                "line of {}: {:?}",
                line.len(),
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn eight_bit_text_becomes_quoted_printable() {
        let msg = "Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße = a \r\nend\t\r\n";
        let out = convert(msg.as_bytes()).unwrap();
        let (head, body) = split_head(&out);
        let head = std::str::from_utf8(head).unwrap();
        assert!(
            head.contains("Content-Transfer-Encoding: quoted-printable\r\n"),
            "{head}"
        );
        assert!(!head.contains("8bit"));
        assert_eq!(body, b"Gr=C3=BC=C3=9Fe =3D a=20\r\nend=09\r\n");
        assert_eq!(qp_decode(body), "Grüße = a \r\nend\t\r\n".as_bytes());
    }

    #[test]
    fn non_mime_message_gets_mime_headers() {
        let out = convert("Subject: cron\r\n\r\nh\u{e9}\r\n".as_bytes()).unwrap();
        assert_eq!(
            out,
            b"Subject: cron\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=unknown-8bit\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nh=C3=A9\r\n"
        );
    }

    #[test]
    fn long_lines_get_soft_breaks() {
        let line = "é".repeat(600);
        let msg = format!(
            "Content-Transfer-Encoding: 8bit\r\n\r\n{line}\r\n{}",
            "x".repeat(3000)
        );
        let out = convert(msg.as_bytes()).unwrap();
        assert_7bit_lines(&out, 76);
        let (_, body) = split_head(&out);
        assert_eq!(
            qp_decode(body),
            format!("{line}\r\n{}", "x".repeat(3000)).as_bytes()
        );
    }

    #[test]
    fn multipart_nested_and_message_rfc822() {
        let msg = concat!(
            "MIME-Version: 1.0\r\n",
            "Content-Type: multipart/mixed;\r\n boundary=\"outer; b\"\r\n",
            "Content-Transfer-Encoding: 8bit\r\n",
            "\r\n",
            "preamble\r\n",
            "--outer; b\r\n",
            "Content-Type: text/plain; charset=utf-8\r\n",
            "Content-Transfer-Encoding: 8bit\r\n",
            "\r\n",
            "café\r\n",
            "--outer; b\r\n",
            "Content-Type: multipart/alternative; boundary=inner\r\n",
            "\r\n",
            "--inner\r\n",
            "Content-Type: text/html\r\n",
            "Content-Transfer-Encoding: 8bit\r\n",
            "\r\n",
            "<p>naïve</p>\r\n",
            "--inner--\r\n",
            "--outer; b\r\n",
            "Content-Type: message/rfc822\r\n",
            "Content-Transfer-Encoding: 8bit\r\n",
            "\r\n",
            "Subject: inner\r\n",
            "Content-Transfer-Encoding: 8bit\r\n",
            "\r\n",
            "über\r\n",
            "--outer; b\r\n",
            "Content-Type: application/octet-stream\r\n",
            "Content-Transfer-Encoding: base64\r\n",
            "\r\n",
            "AAAA\r\n",
            "--outer; b--\r\n",
            "epilogue\r\n",
        );
        let out = convert(msg.as_bytes()).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert_7bit_lines(&out, 76);
        assert!(text.starts_with("MIME-Version: 1.0\r\nContent-Type: multipart/mixed;\r\n boundary=\"outer; b\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\npreamble\r\n"), "{text}");
        assert!(
            text.contains(
                "Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n--outer; b\r\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\r\n\r\n<p>na=C3=AFve</p>\r\n--inner--\r\n--outer; b\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 7bit\r\n\r\nSubject: inner\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=unknown-8bit\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=BCber\r\n"), "{text}");
        assert!(
            text.contains("base64\r\n\r\nAAAA\r\n--outer; b--\r\nepilogue\r\n"),
            "{text}"
        );
    }

    #[test]
    fn seven_bit_parts_pass_unchanged() {
        let msg = concat!(
            "Content-Type: multipart/mixed; boundary=b\r\n\r\n",
            "--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 7bit\r\n\r\na = b  \r\n",
            "--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\u{e9}\r\n--b--\r\n"
        );
        let out = String::from_utf8(convert(msg.as_bytes()).unwrap()).unwrap();
        assert!(
            out.contains("Content-Transfer-Encoding: 7bit\r\n\r\na = b  \r\n--b\r\n"),
            "{out}"
        );
    }

    #[test]
    fn what_cannot_be_converted() {
        let cases: &[(&str, Unconvertible)] = &[
            ("Subject: caf\u{e9}\r\n\r\nx\r\n", EIGHT_BIT_HEADER),
            ("Content-Transfer-Encoding: binary\r\n\r\nx\r\n", BINARY),
            ("Content-Transfer-Encoding: 7bit\r\n\r\n\u{e9}\r\n", EIGHT_BIT_7BIT_PART),
            ("Content-Type: image/png\r\n\r\n\u{e9}\r\n", EIGHT_BIT_7BIT_PART),
            ("Content-Type: message/partial\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\u{e9}\r\n", EIGHT_BIT_7BIT_PART),
            ("Content-Type: multipart/mixed; boundary=b\r\n\r\n\u{e9}\r\n--b--\r\n", EIGHT_BIT_PREAMBLE),
            (
                "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: \u{e9}\r\n\r\nx\r\n--b--\r\n",
                EIGHT_BIT_HEADER,
            ),
        ];
        for (msg, why) in cases {
            assert_eq!(convert(msg.as_bytes()), Err(*why), "{msg:?}");
        }
        let long = format!("X-Long: {}\r\n\r\nx\r\n", "a".repeat(LINE_BUFFER));
        assert_eq!(convert(long.as_bytes()), Err(LONG_HEADER));
        // The error sticks.
        let mut d = Downgrade::new();
        let mut out = Vec::new();
        assert!(d.push("Subject: \u{e9}\r\n".as_bytes(), &mut out).is_err());
        assert!(d.push(b"\r\nbody\r\n", &mut out).is_err());
        assert!(d.finish(&mut out).is_err());
    }

    #[test]
    fn digest_parts_default_to_message_rfc822() {
        let msg = "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: m\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\u{e9}\r\n--d--\r\n";
        let out = String::from_utf8(convert(msg.as_bytes()).unwrap()).unwrap();
        assert!(out.contains("--d\r\n\r\nSubject: m\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=unknown-8bit\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=C3=A9\r\n--d--"), "{out}");
    }

    // ---- property tests (a small PRNG; no external crate) ---------------------

    use crate::test_rng::TestRng as Rng;

    /// Random text lines (≤ 998 octets, 8-bit octets, `=`, spaces, tabs,
    /// lone CRs, dots), never starting with "--".
    fn text(rng: &mut Rng) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..rng.below(6) {
            let len = match rng.below(5) {
                0 => rng.below(998),
                // Longer than a line may be (sendmail input): split by QP.
                1 => rng.below(4000),
                _ => rng.below(90),
            };
            let mut line: Vec<u8> = (0..len)
                .map(|_| match rng.below(10) {
                    0 => 0x80 + rng.below(128) as u8,
                    1 => b' ',
                    2 => b'\t',
                    3 => b'=',
                    4 => b'.',
                    5 if rng.below(8) == 0 => b'\r',
                    _ => b'a' + rng.below(26) as u8,
                })
                .collect();
            if line.starts_with(b"--") {
                line[0] = b'x';
            }
            out.extend_from_slice(&line);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// A random entity; `parts` collects (CTE written, original body) of
    /// every 8bit text leaf.
    fn entity(rng: &mut Rng, depth: usize, out: &mut Vec<u8>, leaves: &mut Vec<Vec<u8>>) {
        if depth < 3 && rng.below(3) == 0 {
            let boundary = format!("b{depth}-{}", rng.below(1000));
            out.extend_from_slice(
                format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\npreamble\r\n").as_bytes(),
            );
            for _ in 0..1 + rng.below(3) {
                out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                entity(rng, depth + 1, out, leaves);
                // The CRLF before a delimiter belongs to it.
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        } else {
            out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
            let body = text(rng);
            out.extend_from_slice(&body);
            leaves.push(body);
        }
    }

    #[test]
    fn property_seven_bit_short_lines_decodable_and_split_independent() {
        let mut rng = Rng::new(3);
        let mut total_leaves = 0;
        for round in 0..350 {
            let mut msg = b"Subject: prop\r\nMIME-Version: 1.0\r\n".to_vec();
            let mut leaves = Vec::new();
            entity(&mut rng, 0, &mut msg, &mut leaves);
            let out = convert(&msg).unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_7bit_lines(&out, 998);
            // Every QP body decodes back to its original text. Bodies are
            // found in order after each converted header section.
            let text = out.as_slice();
            let marker: &[u8] = b"Content-Transfer-Encoding: quoted-printable\r\n\r\n";
            let mut found = 0;
            let mut pos = 0;
            while let Some(p) = text[pos..].windows(marker.len()).position(|w| w == marker) {
                let start = pos + p + marker.len();
                // The body runs to the next delimiter line (or the end).
                let end = text[start..]
                    .windows(4)
                    .position(|w| w == b"\r\n--")
                    .map_or(text.len(), |e| start + e);
                let body = &text[start..end];
                for line in body.split(|&b| b == b'\n') {
                    assert!(line.strip_suffix(b"\r").unwrap_or(line).len() <= 76);
                }
                // The CRLF before a delimiter is the delimiter's.
                assert_eq!(qp_decode(body), leaves[found], "round {round} leaf {found}");
                found += 1;
                pos = end;
            }
            assert_eq!(found, leaves.len(), "round {round}");
            total_leaves += found;
            // Any split gives the same output.
            for _ in 0..4 {
                let max = 1 + rng.below(70);
                let mut r2 = Rng::new(rng.next_u64());
                let again = convert_chunked(&msg, &mut || 1 + r2.below(max)).unwrap();
                assert_eq!(again, out, "round {round}: chunking changed the output");
            }
            let bytes = convert_chunked(&msg, &mut || 1).unwrap();
            assert_eq!(bytes, out);
        }
        assert!(total_leaves > 500, "{total_leaves}");
    }
}
