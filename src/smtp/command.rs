//! SMTP command decoding (RFC 5321 §4.1.1, §4.1.2; ESMTP parameters of
//! RFC 1870 SIZE, RFC 6152 BODY, RFC 6531 SMTPUTF8 and RFC 8689
//! REQUIRETLS; RFC 3030 §2 BDAT).
//!
//! A command line (without its CRLF) becomes a [`Command`] or a reply from
//! the reply table. Verbs are case-insensitive; `MAIL FROM: <a>` with a space
//! after the colon is tolerated as most MTAs do. Addresses are parsed by
//! [`super::address`], so a `Command` never holds an invalid path.

use super::address::{parse_path, Address, AddressError};
use super::dsn::{DsnMail, DsnRcpt};
use super::reply::{self, Reply};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body: Body,
    /// `SMTPUTF8` (RFC 6531): the transaction may use UTF-8 addresses and
    /// header fields.
    pub smtputf8: bool,
    /// `REQUIRETLS` (RFC 8689 §2): relay only over verified TLS. Parsed
    /// in any session; the server refuses it outside TLS.
    pub requiretls: bool,
    /// `RET=` and `ENVID=` (RFC 3461 §4.3, §4.4).
    pub dsn: DsnMail,
}

/// The ESMTP parameters of `RCPT TO:` (RFC 3461 `NOTIFY=`, `ORCPT=`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {
    pub dsn: DsnRcpt,
}

/// How a path was written: non-ASCII text (a UTF-8 local part, a U-label
/// domain) is allowed only in a transaction begun with `MAIL ... SMTPUTF8`
/// (RFC 6531 §3.4), which the session knows and the parser does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathText {
    Ascii,
    Utf8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail(Option<Address>, MailParams),
    /// `RCPT TO:<postmaster>` without a domain is allowed (RFC 5321 §4.5.1):
    /// it is `Rcpt(None, _, _)`.
    Rcpt(Option<Address>, PathText, RcptParams),
    Data,
    /// `BDAT size [LAST]` (RFC 3030): `size` octets follow the line.
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth(String),
}

/// Decodes one command line.
///
/// The line is parsed as bytes and split only at ASCII delimiters, so a
/// multi-byte character anywhere (even where a `:` or `<` is expected) is a
/// syntax error, never a slice inside a character.
pub fn parse_command(line: &[u8]) -> Result<Command, Reply> {
    // Commands are ASCII; UTF-8 is allowed only inside paths, and only
    // with SMTPUTF8 (else 553 5.6.7).
    if std::str::from_utf8(line).is_err() {
        return Err(reply::SYNTAX_PARAMS);
    }
    let mut parts = line.splitn(2, |&b| b == b' ');
    // Upper-cased into a fixed buffer (no allocation per command); a verb
    // longer than the longest known one (STARTTLS) is unknown.
    let word = parts.next().unwrap_or_default();
    let mut upper = [0u8; 8];
    let verb: &[u8] = match upper.get_mut(..word.len()) {
        Some(dst) => {
            dst.copy_from_slice(word);
            dst.make_ascii_uppercase();
            dst
        }
        None => b"",
    };
    let rest = parts.next().unwrap_or_default().trim_ascii();
    match verb {
        b"HELO" | b"EHLO" => {
            let name = rest
                .split(|b| b.is_ascii_whitespace())
                .next()
                .unwrap_or_default();
            // No control octets: the name goes into the Received: field.
            if name.is_empty() || name.len() > 255 || name.iter().any(|&b| b < 0x20 || b == 0x7f) {
                return Err(reply::SYNTAX_HELO);
            }
            let name = text(name)?;
            Ok(if verb == b"HELO" {
                Command::Helo(name)
            } else {
                Command::Ehlo(name)
            })
        }
        b"MAIL" => parse_mail(rest),
        b"RCPT" => parse_rcpt(rest),
        b"DATA" => no_args(rest, Command::Data),
        b"BDAT" => parse_bdat(rest),
        b"RSET" => no_args(rest, Command::Rset),
        b"QUIT" => no_args(rest, Command::Quit),
        b"STARTTLS" => no_args(rest, Command::StartTls),
        b"NOOP" => Ok(Command::Noop),
        b"HELP" => Ok(Command::Help),
        b"VRFY" | b"EXPN" => Ok(Command::Vrfy),
        b"AUTH" => Ok(Command::Auth(text(rest)?)),
        _ => Err(reply::UNKNOWN_COMMAND),
    }
}

/// A piece of the (already UTF-8 checked) line cut at ASCII delimiters.
fn text(bytes: &[u8]) -> Result<String, Reply> {
    std::str::from_utf8(bytes)
        .map(str::to_string)
        .map_err(|_| reply::SYNTAX_PARAMS)
}

fn no_args(rest: &[u8], cmd: Command) -> Result<Command, Reply> {
    if rest.is_empty() {
        Ok(cmd)
    } else {
        Err(reply::SYNTAX_PARAMS)
    }
}

/// Splits `FROM:<path> params` into the path and its parameters.
fn split_path<'a>(rest: &'a [u8], prefix: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let (head, tail) = rest.split_at_checked(prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let after = tail.trim_ascii_start();
    if after.first() != Some(&b'<') {
        return None;
    }
    // The path ends at the first '>' outside a quoted string.
    let mut quoted = false;
    let mut escaped = false;
    for (i, &b) in after.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                let (path, params) = after.split_at_checked(i + 1)?;
                return Some((path, params.trim_ascii()));
            }
            _ => {}
        }
    }
    None
}

fn parse_mail(rest: &[u8]) -> Result<Command, Reply> {
    let (path, params) = split_path(rest, b"FROM:").ok_or(reply::SYNTAX_MAIL)?;
    let path = std::str::from_utf8(path).map_err(|_| reply::SYNTAX_MAIL)?;
    let sender = parse_path(path).map_err(|e| match e {
        AddressError::NonAscii => reply::NON_ASCII,
        _ => reply::BAD_SENDER,
    });
    let mut out = MailParams {
        size: None,
        body: Body::SevenBit,
        smtputf8: false,
        requiretls: false,
        dsn: DsnMail::default(),
    };
    for param in params
        .split(|b| b.is_ascii_whitespace())
        .filter(|p| !p.is_empty())
    {
        let mut kv = param.splitn(2, |&b| b == b'=');
        let key = kv.next().unwrap_or_default().to_ascii_uppercase();
        let raw = kv.next().unwrap_or_default();
        let value = raw.to_ascii_uppercase();
        match key.as_slice() {
            b"SIZE" => {
                out.size = Some(
                    std::str::from_utf8(&value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .ok_or(reply::SYNTAX_PARAMS)?,
                )
            }
            b"BODY" => {
                out.body = match value.as_slice() {
                    b"7BIT" => Body::SevenBit,
                    b"8BITMIME" => Body::EightBitMime,
                    _ => return Err(reply::SYNTAX_PARAMS),
                }
            }
            b"SMTPUTF8" if value.is_empty() => out.smtputf8 = true,
            b"REQUIRETLS" if value.is_empty() => out.requiretls = true,
            b"RET" | b"ENVID" => out.dsn.param(&key, raw)?,
            _ => return Err(reply::UNKNOWN_PARAMETER),
        }
    }
    if !path.is_ascii() && !out.smtputf8 {
        return Err(reply::NON_ASCII);
    }
    Ok(Command::Mail(sender?, out))
}

/// RFC 3030 §2: `bdat-cmd ::= "BDAT" SP chunk-size [ SP end-marker ] CR LF`,
/// `chunk-size ::= 1*DIGIT`, `end-marker ::= "LAST"`.
fn parse_bdat(rest: &[u8]) -> Result<Command, Reply> {
    let mut words = rest.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|w| w.iter().all(u8::is_ascii_digit))
        .and_then(|w| std::str::from_utf8(w).ok())
        .and_then(|w| w.parse::<u64>().ok())
        .ok_or(reply::SYNTAX_BDAT)?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(reply::SYNTAX_BDAT),
    };
    if words.next().is_some() {
        return Err(reply::SYNTAX_BDAT);
    }
    Ok(Command::Bdat { size, last })
}

fn parse_rcpt(rest: &[u8]) -> Result<Command, Reply> {
    let (path, params) = split_path(rest, b"TO:").ok_or(reply::SYNTAX_RCPT)?;
    let mut out = RcptParams::default();
    for param in params
        .split(|b| b.is_ascii_whitespace())
        .filter(|p| !p.is_empty())
    {
        let mut kv = param.splitn(2, |&b| b == b'=');
        let key = kv.next().unwrap_or_default().to_ascii_uppercase();
        let raw = kv.next().unwrap_or_default();
        match key.as_slice() {
            b"NOTIFY" | b"ORCPT" => out.dsn.param(&key, raw)?,
            _ => return Err(reply::UNKNOWN_PARAMETER),
        }
    }
    if path.eq_ignore_ascii_case(b"<postmaster>") {
        return Ok(Command::Rcpt(None, PathText::Ascii, out));
    }
    let path = std::str::from_utf8(path).map_err(|_| reply::SYNTAX_RCPT)?;
    let text = if path.is_ascii() {
        PathText::Ascii
    } else {
        PathText::Utf8
    };
    match parse_path(path) {
        Ok(Some(a)) => Ok(Command::Rcpt(Some(a), text, out)),
        Ok(None) => Err(reply::BAD_RECIPIENT),
        Err(AddressError::NonAscii) => Err(reply::NON_ASCII),
        Err(_) => Err(reply::BAD_RECIPIENT),
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests {
    use super::*;

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse_command(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(parse_command(b"QuIt"), Ok(Command::Quit));
        assert_eq!(parse_command(b"noop anything"), Ok(Command::Noop));
    }

    #[test]
    fn mail_with_params() {
        match parse_command(b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME").unwrap() {
            Command::Mail(Some(a), p) => {
                assert_eq!(a.to_string(), "a@b.example");
                assert_eq!(p.size, Some(1000));
                assert_eq!(p.body, Body::EightBitMime);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_command(b"MAIL FROM:<>"),
            Ok(Command::Mail(None, _))
        ));
        assert!(matches!(
            parse_command(b"mail from: <a@b.example>"),
            Ok(Command::Mail(Some(_), _))
        ));
    }

    #[test]
    fn mail_errors() {
        assert_eq!(
            parse_command(b"MAIL FROM:a@b.example"),
            Err(reply::SYNTAX_MAIL)
        );
        assert_eq!(
            parse_command(b"MAIL TO:<a@b.example>"),
            Err(reply::SYNTAX_MAIL)
        );
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b.example> FOO=1"),
            Err(reply::UNKNOWN_PARAMETER)
        );
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b.example> SIZE=x"),
            Err(reply::SYNTAX_PARAMS)
        );
        assert_eq!(
            parse_command(b"MAIL FROM:<a b@c.example>"),
            Err(reply::BAD_SENDER)
        );
    }

    #[test]
    fn requiretls_parameter_is_a_flag() {
        match parse_command(b"MAIL FROM:<a@b.example> SIZE=10 RequireTLS") {
            Ok(Command::Mail(_, p)) => assert!(p.requiretls && p.size == Some(10)),
            other => panic!("{other:?}"),
        }
        match parse_command(b"MAIL FROM:<a@b.example>") {
            Ok(Command::Mail(_, p)) => assert!(!p.requiretls),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_command(b"MAIL FROM:<a@b.example> REQUIRETLS=1"),
            Err(reply::UNKNOWN_PARAMETER)
        );
    }

    #[test]
    fn smtputf8_parameter_allows_a_utf8_sender() {
        match parse_command("MAIL FROM:<jöe@b.example> SMTPUTF8 BODY=8BITMIME".as_bytes()) {
            Ok(Command::Mail(Some(a), p)) => {
                assert_eq!(a.local, "jöe");
                assert!(p.smtputf8);
                assert_eq!(p.body, Body::EightBitMime);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_command("MAIL FROM:<jöe@b.example>".as_bytes()),
            Err(reply::NON_ASCII)
        );
        assert_eq!(
            parse_command("MAIL FROM:<jöe@b.example> SMTPUTF8=yes".as_bytes()),
            Err(reply::UNKNOWN_PARAMETER)
        );
        // A recipient says how it was written; the session decides.
        assert!(matches!(
            parse_command("RCPT TO:<jöe@b.example>".as_bytes()),
            Ok(Command::Rcpt(Some(_), PathText::Utf8, _))
        ));
    }

    #[test]
    fn rcpt() {
        assert_eq!(
            parse_command(b"RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt(None, PathText::Ascii, RcptParams::default()))
        );
        assert_eq!(parse_command(b"RCPT TO:<>"), Err(reply::BAD_RECIPIENT));
        assert!(matches!(
            parse_command(b"rcpt to:<x@y.example>"),
            Ok(Command::Rcpt(Some(_), PathText::Ascii, _))
        ));
        assert_eq!(
            parse_command(b"RCPT TO:<\"a>b\"@y.example>").map(|_| ()),
            Ok(())
        );
    }

    #[test]
    fn dsn_parameters() {
        use crate::smtp::dsn::{Notify, Ret};
        match parse_command(b"MAIL FROM:<a@b.example> ret=full ENVID=Q+2Bx SIZE=5").unwrap() {
            Command::Mail(_, p) => {
                assert_eq!(p.dsn.ret, Some(Ret::Full));
                // ENVID keeps its case.
                assert_eq!(p.dsn.envid.as_deref(), Some("Q+x"));
                assert_eq!(p.size, Some(5));
            }
            other => panic!("{other:?}"),
        }
        match parse_command(b"RCPT TO:<x@y.example> notify=never ORCPT=rfc822;Ab@c").unwrap() {
            Command::Rcpt(Some(_), _, p) => {
                assert_eq!(p.dsn.notify, Some(Notify::NEVER));
                assert_eq!(p.dsn.orcpt.unwrap().addr, "Ab@c");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_command(b"RCPT TO:<postmaster> NOTIFY=FAILURE"),
            Ok(Command::Rcpt(None, _, p)) if p.dsn.notify.is_some()
        ));
        for bad in [
            &b"RCPT TO:<x@y.example> NOTIFY=NEVER,DELAY"[..],
            b"RCPT TO:<x@y.example> ORCPT=rfc822",
            b"MAIL FROM:<a@b.example> RET=",
            b"MAIL FROM:<a@b.example> ENVID=a+4",
        ] {
            assert_eq!(parse_command(bad), Err(reply::SYNTAX_PARAMS), "{bad:?}");
        }
    }

    /// Found by fuzzing (smtp_command): slicing at the prefix length
    /// panicked inside a multi-byte character, aborting the daemon.
    #[test]
    fn non_ascii_where_the_prefix_ends_is_a_syntax_error() {
        assert_eq!(
            parse_command("MAIL FROMé:<a@b>".as_bytes()),
            Err(reply::SYNTAX_MAIL)
        );
        assert_eq!(
            parse_command("RCPT TOé".as_bytes()),
            Err(reply::SYNTAX_RCPT)
        );
        assert_eq!(
            parse_command("MAIL FROM".as_bytes()),
            Err(reply::SYNTAX_MAIL)
        );
    }

    #[test]
    fn unknown_and_garbage() {
        assert_eq!(parse_command(b"FOO"), Err(reply::UNKNOWN_COMMAND));
        assert_eq!(parse_command(b""), Err(reply::UNKNOWN_COMMAND));
        assert_eq!(parse_command(b"\xff\xfe"), Err(reply::SYNTAX_PARAMS));
        assert_eq!(parse_command(b"DATA x"), Err(reply::SYNTAX_PARAMS));
        assert_eq!(parse_command(b"HELO"), Err(reply::SYNTAX_HELO));
        // Control octets never reach the Received: field (found by fuzzing:
        // a vertical tab is not ASCII white space, so it stayed in the name).
        for bad in [
            &b"HELO [192\x0b.0.2.1]"[..],
            b"EHLO a\x00b",
            b"EHLO a\x1bb",
            b"HELO a\x7f",
        ] {
            assert_eq!(parse_command(bad), Err(reply::SYNTAX_HELO), "{bad:?}");
        }
    }

    // Issue 11 item 1: these two lines aborted the release daemon (a `&str`
    // sliced inside a multi-byte character).
    #[test]
    fn multibyte_where_a_delimiter_belongs_is_a_syntax_error() {
        assert_eq!(
            parse_command("MAIL FROMé<a@b.test>".as_bytes()),
            Err(reply::SYNTAX_MAIL)
        );
        assert_eq!(
            parse_command("RCPT TOˊ".as_bytes()),
            Err(reply::SYNTAX_RCPT)
        );
        assert_eq!(
            parse_command("MAIL FRO€:<a@b.test>".as_bytes()),
            Err(reply::SYNTAX_MAIL)
        );
        assert_eq!(
            parse_command("RCPT T😀<a@b.test>".as_bytes()),
            Err(reply::SYNTAX_RCPT)
        );
        assert_eq!(
            parse_command("MAILé FROM:<a@b.test>".as_bytes()),
            Err(reply::UNKNOWN_COMMAND)
        );
        assert_eq!(
            parse_command("MAIL FROM:<é@b.test>".as_bytes()),
            Err(reply::NON_ASCII)
        );
        assert_eq!(
            parse_command("RCPT TO:<a@b.test>é".as_bytes()),
            Err(reply::UNKNOWN_PARAMETER)
        );
        assert_eq!(
            parse_command("MAIL FROM:<a@b.test> SIZE=1é".as_bytes()),
            Err(reply::SYNTAX_PARAMS)
        );
    }

    const COMMANDS: [&str; 9] = [
        "MAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME",
        "RCPT TO:<\"q\\\"x\"@y.test>",
        "RCPT TO:<@relay.test:x@y.test>",
        "EHLO client.test",
        "HELO client.test",
        "AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=",
        "MAIL FROM:<>",
        "STARTTLS",
        "RCPT TO:<postmaster>",
    ];
    const WIDE: [&str; 5] = ["é", "ˊ", "€", "😀", "\u{a0}"];

    /// A multi-byte character inserted at every position of every command,
    /// and replacing every octet of it: never a panic.
    #[test]
    fn multibyte_at_every_position() {
        for cmd in COMMANDS {
            for wide in WIDE {
                for at in 0..=cmd.len() {
                    let mut inserted = cmd.as_bytes().to_vec();
                    inserted.splice(at..at, wide.bytes());
                    let _ = parse_command(&inserted);
                    if at < cmd.len() {
                        let mut replaced = cmd.as_bytes().to_vec();
                        replaced.splice(at..=at, wide.bytes());
                        let _ = parse_command(&replaced);
                    }
                }
            }
        }
    }

    /// Every octet prefix and suffix of UTF-8-laden lines (cuts inside
    /// characters included): never a panic.
    #[test]
    fn every_prefix_and_suffix_of_utf8_lines() {
        let lines = [
            "MAIL FROMé<a@b.test>",
            "RCPT TOˊ",
            "MAIL FROM:<\"é\"@b.test> SIZE=€",
            "RCPT TO:<a@b😀.test> NOTIFY=ˊ",
            "EHLO é€😀",
            "AUTH PLAIN é",
            "mail from:\u{a0}<a@b.test>",
        ];
        for line in lines {
            let b = line.as_bytes();
            for cut in 0..=b.len() {
                let _ = parse_command(&b[..cut]);
                let _ = parse_command(&b[cut..]);
            }
        }
    }
}
