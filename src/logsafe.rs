//! Peer-supplied text in log lines, escaped.
//!
//! Why: logs go to a terminal or syslog, and a HELO name, an address, an
//! AUTH user name or a remote server's reply can carry ESC, BEL, NUL, DEL or
//! CR (terminal escape injection, forged log lines). Every log argument that
//! came from outside the host goes through [`LogSafe`], which prints
//! printable ASCII as is and every other octet as `\xNN` (a backslash as
//! `\\`, so an escape cannot be faked). Non-ASCII is escaped too: C1
//! controls (U+0080..U+009F) and bidirectional overrides are as dangerous on
//! a UTF-8 terminal, and log readers grep for ASCII anyway.
//!
//! Invariant: the output of `LogSafe` contains only octets 0x20..=0x7e.

use std::fmt;

/// Displays its text with everything but printable ASCII escaped.
pub struct LogSafe<T>(pub T);

impl<T: AsRef<[u8]>> fmt::Display for LogSafe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0.as_ref() {
            match b {
                b'\\' => f.write_str("\\\\")?,
                0x20..=0x7e => fmt::Write::write_char(f, char::from(b))?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        Ok(())
    }
}

impl<T: AsRef<[u8]>> fmt::Debug for LogSafe<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Formats any `Display` value (a reply, an error, an address) and escapes
/// the result.
pub fn log_safe(value: &impl fmt::Display) -> LogSafe<String> {
    LogSafe(value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ascii_passes_through() {
        let s = "mx.example [192.0.2.1] 250 2.0.0 Ok: queued as X~";
        assert_eq!(LogSafe(s).to_string(), s);
    }

    #[test]
    fn controls_backslash_and_non_ascii_are_escaped() {
        assert_eq!(LogSafe("a\x1b[31mb").to_string(), "a\\x1b[31mb");
        assert_eq!(
            LogSafe(b"\x00\x07\x7f\r\n\t".as_slice()).to_string(),
            "\\x00\\x07\\x7f\\x0d\\x0a\\x09"
        );
        assert_eq!(LogSafe("a\\x1b").to_string(), "a\\\\x1b");
        assert_eq!(
            LogSafe("é\u{9b}\u{202e}").to_string(),
            "\\xc3\\xa9\\xc2\\x9b\\xe2\\x80\\xae"
        );
        assert_eq!(LogSafe(b"\xff".as_slice()).to_string(), "\\xff");
        assert_eq!(log_safe(&"x\x1by").to_string(), "x\\x1by");
    }

    #[test]
    fn output_is_only_printable_ascii() {
        let all: Vec<u8> = (0..=255).collect();
        let out = LogSafe(&all).to_string();
        assert!(out.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{out}");
        assert_eq!(out.matches("\\x").count(), 256 - 95, "{out}");
    }
}
