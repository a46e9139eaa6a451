//! A bounded scanner for the one JSON shape OAuth2 token endpoints send: a
//! flat object of string and number members (RFC 6749 §5.1, §5.2; RFC 8628
//! §3.2, §3.5), parsed from a complete body (sans-IO, no allocation beyond
//! the values kept).
//!
//! Why not a JSON library: tern needs five members of one object, and a
//! router's flash is small. The grammar is RFC 8259's, checked in full:
//! whitespace, strings with every escape (`\uXXXX` with surrogate pairs;
//! a lone surrogate is an error), numbers, `true`, `false`, `null`.
//! Members whose value is an object or an array (a provider's extension)
//! are checked and skipped, at most [`MAX_DEPTH`] levels deep; only the
//! top-level members are returned.
//!
//! Invariants: input larger than [`MAX_JSON_BYTES`] is refused before it
//! is looked at; the scan is one pass over the input with an explicit
//! depth counter (no recursion); a top-level name appears at most once
//! (a duplicate is an error: RFC 8259 §4 leaves its meaning open, and a
//! token response whose `access_token` could be read two ways is refused).
//!
//! Not supported: anything but an object at the top level.

use std::fmt;

/// Largest body scanned (token responses are 1–4 KiB).
pub const MAX_JSON_BYTES: usize = 64 * 1024;
/// Deepest nesting of skipped values (the top-level object is level 1).
pub const MAX_DEPTH: usize = 16;
/// Most top-level members kept.
pub const MAX_MEMBERS: usize = 64;

/// A top-level member's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    String(String),
    /// A number's text as sent (checked against the grammar).
    Number(String),
    Bool(bool),
    Null,
    /// An object or an array (skipped, not kept).
    Nested,
}

/// Why a body is not a flat JSON object; the offset is where the scan
/// stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    pub offset: usize,
    pub what: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a JSON object ({} at byte {})",
            self.what, self.offset
        )
    }
}

impl std::error::Error for JsonError {}

/// The top-level members of a JSON object, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Object {
    pub members: Vec<(String, Value)>,
}

impl Object {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.members.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// A string member.
    pub fn str(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// A non-negative integer member, sent as a number or as a string of
    /// digits (Azure AD v1 sends `"expires_in": "3599"`). Saturates at
    /// `u64::MAX`; fractions and exponents are not integers here.
    pub fn uint(&self, name: &str) -> Option<u64> {
        let text = match self.get(name)? {
            Value::Number(n) => n.as_str(),
            Value::String(s) => s.as_str(),
            _ => return None,
        };
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(text.bytes().fold(0u64, |acc, d| {
            acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        }))
    }
}

/// Parses `body` as one JSON object (surrounding whitespace allowed).
pub fn parse_object(body: &[u8]) -> Result<Object, JsonError> {
    if body.len() > MAX_JSON_BYTES {
        return Err(JsonError {
            offset: 0,
            what: "body too large",
        });
    }
    let mut s = Scanner {
        bytes: body,
        pos: 0,
    };
    s.skip_ws();
    s.expect(b'{', "expected '{'")?;
    let mut object = Object::default();
    s.skip_ws();
    if s.peek() == Some(b'}') {
        s.pos += 1;
    } else {
        loop {
            s.skip_ws();
            let name = s.string()?;
            s.skip_ws();
            s.expect(b':', "expected ':'")?;
            s.skip_ws();
            let at = s.pos;
            let value = s.value()?;
            if object.get(&name).is_some() {
                return Err(s.error_at(at, "duplicate name"));
            }
            if object.members.len() >= MAX_MEMBERS {
                return Err(s.error_at(at, "too many members"));
            }
            object.members.push((name, value));
            s.skip_ws();
            match s.next() {
                Some(b',') => {}
                Some(b'}') => break,
                _ => return Err(s.error("expected ',' or '}'")),
            }
        }
    }
    s.skip_ws();
    if s.pos != body.len() {
        return Err(s.error("data after the object"));
    }
    Ok(object)
}

/// A JSON string literal (RFC 8259 §7): `"`, `\` and control characters
/// escaped, U+2028/U+2029 too (they break some JavaScript readers); other
/// characters as UTF-8. The one JSON writer: webhook bodies, and the fuzz
/// target's round trip through the scanner.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)))
            }
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Scanner<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn error(&self, what: &'static str) -> JsonError {
        self.error_at(self.pos, what)
    }

    fn error_at(&self, offset: usize, what: &'static str) -> JsonError {
        JsonError { offset, what }
    }

    fn expect(&mut self, b: u8, what: &'static str) -> Result<(), JsonError> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), JsonError> {
        let end = self.pos.saturating_add(word.len());
        if self.bytes.get(self.pos..end) == Some(word) {
            self.pos = end;
            Ok(())
        } else {
            Err(self.error("bad literal"))
        }
    }

    /// A top-level member's value.
    fn value(&mut self) -> Result<Value, JsonError> {
        match self.peek() {
            Some(b'"') => self.string().map(Value::String),
            Some(b'{' | b'[') => self.skip_nested().map(|()| Value::Nested),
            Some(b't') => self.literal(b"true").map(|()| Value::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|()| Value::Bool(false)),
            Some(b'n') => self.literal(b"null").map(|()| Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number().map(Value::Number),
            _ => Err(self.error("expected a value")),
        }
    }

    /// A number (RFC 8259 §6): `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Result<String, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.next() {
            Some(b'0') => {}
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("bad number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.one_or_more_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            self.one_or_more_digits()?;
        }
        let text = self.bytes.get(start..self.pos).unwrap_or_default();
        // Only ASCII was accepted above.
        Ok(String::from_utf8_lossy(text).into_owned())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn one_or_more_digits(&mut self) -> Result<(), JsonError> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.error("bad number"));
        }
        self.digits();
        Ok(())
    }

    /// A string literal, decoded.
    fn string(&mut self) -> Result<String, JsonError> {
        self.expect(b'"', "expected a string")?;
        let mut out = String::new();
        loop {
            let run_start = self.pos;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.pos += 1;
            }
            let run = self.bytes.get(run_start..self.pos).unwrap_or_default();
            match std::str::from_utf8(run) {
                Ok(text) => out.push_str(text),
                Err(e) => return Err(self.error_at(run_start + e.valid_up_to(), "invalid UTF-8")),
            }
            match self.next() {
                Some(b'"') => return Ok(out),
                Some(b'\\') => out.push(self.escape()?),
                Some(_) => {
                    self.pos -= 1;
                    return Err(self.error("control character in a string"));
                }
                None => return Err(self.error("unterminated string")),
            }
        }
    }

    /// After a backslash.
    fn escape(&mut self) -> Result<char, JsonError> {
        let c = match self.next() {
            Some(b'"') => '"',
            Some(b'\\') => '\\',
            Some(b'/') => '/',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'n') => '\n',
            Some(b'r') => '\r',
            Some(b't') => '\t',
            Some(b'u') => {
                let at = self.pos;
                let high = self.hex4()?;
                let code = match high {
                    0xD800..=0xDBFF => {
                        if self.bytes.get(self.pos..self.pos.saturating_add(2)) != Some(b"\\u") {
                            return Err(self.error_at(at, "lone surrogate"));
                        }
                        self.pos += 2;
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(self.error_at(at, "lone surrogate"));
                        }
                        0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return Err(self.error_at(at, "lone surrogate")),
                    c => c,
                };
                char::from_u32(code).ok_or_else(|| self.error_at(at, "bad \\u escape"))?
            }
            _ => return Err(self.error("bad escape")),
        };
        Ok(c)
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.next() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(self.error("bad \\u escape")),
            };
            v = v * 16 + u32::from(d);
        }
        Ok(v)
    }

    /// An object or array, checked and skipped, iteratively. The stack
    /// holds whether each open level is an object.
    fn skip_nested(&mut self) -> Result<(), JsonError> {
        let mut stack: Vec<bool> = Vec::new();
        // Open the first level.
        let mut expect_value = true;
        loop {
            self.skip_ws();
            if expect_value {
                match self.peek() {
                    Some(open @ (b'{' | b'[')) => {
                        // Level 1 is the top-level object.
                        if stack.len() + 2 > MAX_DEPTH {
                            return Err(self.error("nested too deep"));
                        }
                        self.pos += 1;
                        let is_object = open == b'{';
                        stack.push(is_object);
                        self.skip_ws();
                        let close = if is_object { b'}' } else { b']' };
                        if self.peek() == Some(close) {
                            self.pos += 1;
                            stack.pop();
                            expect_value = false;
                        } else if is_object {
                            self.member_name()?;
                        }
                        // else: an array's first value follows.
                    }
                    _ => {
                        self.value_scalar()?;
                        expect_value = false;
                    }
                }
                if stack.is_empty() {
                    return Ok(());
                }
                continue;
            }
            // After a value inside a container.
            let Some(&is_object) = stack.last() else {
                return Ok(());
            };
            let close = if is_object { b'}' } else { b']' };
            match self.next() {
                Some(b',') => {
                    if is_object {
                        self.skip_ws();
                        self.member_name()?;
                    }
                    expect_value = true;
                }
                Some(b) if b == close => {
                    stack.pop();
                    if stack.is_empty() {
                        return Ok(());
                    }
                }
                _ => return Err(self.error("expected ',' or a closing bracket")),
            }
        }
    }

    /// `"name" :` inside a skipped object.
    fn member_name(&mut self) -> Result<(), JsonError> {
        self.skip_ws();
        self.string()?;
        self.skip_ws();
        self.expect(b':', "expected ':'")
    }

    fn value_scalar(&mut self) -> Result<(), JsonError> {
        match self.peek() {
            Some(b'{' | b'[') => Err(self.error("expected a value")),
            _ => self.value().map(drop),
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::String(v.into())
    }

    #[test]
    fn flat_members_in_order() {
        let o = parse_object(
            b" {\n \"a\" : \"x\", \"n\":-12.5e+3,\"t\":true,\"f\":false,\"z\":null,\"i\":0}\r\n",
        )
        .unwrap();
        assert_eq!(
            o.members,
            vec![
                ("a".into(), s("x")),
                ("n".into(), Value::Number("-12.5e+3".into())),
                ("t".into(), Value::Bool(true)),
                ("f".into(), Value::Bool(false)),
                ("z".into(), Value::Null),
                ("i".into(), Value::Number("0".into())),
            ]
        );
        assert_eq!(parse_object(b"{}").unwrap(), Object::default());
        assert_eq!(parse_object(b" { } ").unwrap(), Object::default());
    }

    #[test]
    fn escapes_decode() {
        let o = parse_object(
            br#"{"e":"q\" b\\ s\/ \b\f\n\r\t \u00e9\u20AC \ud83d\ude00 end","k\u0041":"1"}"#,
        )
        .unwrap();
        assert_eq!(o.str("e"), Some("q\" b\\ s/ \u{8}\u{c}\n\r\t é€ 😀 end"));
        assert_eq!(o.str("kA"), Some("1"));
        // Raw UTF-8 passes through.
        assert_eq!(
            parse_object("{\"x\":\"grüße\"}".as_bytes())
                .unwrap()
                .str("x"),
            Some("grüße")
        );
    }

    #[test]
    fn nested_values_are_skipped() {
        let o = parse_object(
            br#"{"a":{"b":[1,{"c":"}"},[],{}],"d":"]"},"e":[],"f":[[["x"]]],"access_token":"t"}"#,
        )
        .unwrap();
        assert_eq!(o.get("a"), Some(&Value::Nested));
        assert_eq!(o.get("e"), Some(&Value::Nested));
        assert_eq!(o.get("f"), Some(&Value::Nested));
        assert_eq!(o.str("access_token"), Some("t"));
        assert_eq!(o.members.len(), 4);
    }

    #[test]
    fn depth_is_bounded() {
        let ok = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH - 1),
            "]".repeat(MAX_DEPTH - 1)
        );
        assert!(parse_object(ok.as_bytes()).is_ok(), "{ok}");
        let deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert_eq!(
            parse_object(deep.as_bytes()).unwrap_err().what,
            "nested too deep"
        );
        // A million brackets: refused by size, no stack used.
        let huge = "[".repeat(1_000_000);
        assert!(parse_object(huge.as_bytes()).is_err());
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for bad in [
            &b""[..],
            b"[]",
            b"\"s\"",
            b"{",
            b"{\"a\"}",
            b"{\"a\":}",
            b"{\"a\":1,}",
            b"{,}",
            b"{\"a\":1}x",
            b"{\"a\":1}{}",
            b"{a:1}",
            b"{'a':1}",
            b"{\"a\":01}",
            b"{\"a\":1.}",
            b"{\"a\":.5}",
            b"{\"a\":1e}",
            b"{\"a\":-}",
            b"{\"a\":+1}",
            b"{\"a\":tru}",
            b"{\"a\":nul}",
            b"{\"a\":\"x\ny\"}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\\u12\"}",
            b"{\"a\":\"\\ud800\"}",
            b"{\"a\":\"\\ud800\\u0041\"}",
            b"{\"a\":\"\\udc00\"}",
            b"{\"a\":\"\xff\"}",
            b"{\"a\":\"unterminated}",
            b"{\"a\":[1,]}",
            b"{\"a\":[1 2]}",
            b"{\"a\":{\"b\"}}",
            b"{\"a\":{\"b\":1,}}",
            b"{\"a\":[}",
            b"{\"a\":{]}",
            b"{\"a\":1,\"a\":2}",
        ] {
            assert!(
                parse_object(bad).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let big = vec![b' '; MAX_JSON_BYTES + 1];
        assert_eq!(parse_object(&big).unwrap_err().what, "body too large");
    }

    #[test]
    fn members_are_bounded() {
        let body = format!(
            "{{{}}}",
            (0..=MAX_MEMBERS)
                .map(|i| format!("\"k{i}\":1"))
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(
            parse_object(body.as_bytes()).unwrap_err().what,
            "too many members"
        );
    }

    #[test]
    fn integers_from_numbers_or_digit_strings() {
        let o = parse_object(
            br#"{"a":3599,"b":"3599","c":1.5,"d":-1,"e":"x","f":99999999999999999999999}"#,
        )
        .unwrap();
        assert_eq!(o.uint("a"), Some(3599));
        assert_eq!(o.uint("b"), Some(3599));
        assert_eq!(o.uint("c"), None);
        assert_eq!(o.uint("d"), None);
        assert_eq!(o.uint("e"), None);
        assert_eq!(o.uint("f"), Some(u64::MAX));
        assert_eq!(o.uint("missing"), None);
    }

    #[test]
    fn quote_round_trips() {
        for text in ["", "plain", "q\"\\/", "\u{0}\u{1f}\n", "é😀"] {
            let body = format!("{{\"k\":{}}}", quote(text));
            assert_eq!(parse_object(body.as_bytes()).unwrap().str("k"), Some(text));
        }
    }
}
