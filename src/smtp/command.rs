//! SMTP command decoding (RFC 5321 §4.1.1, §4.1.2; ESMTP parameters of
//! RFC 1870 SIZE and RFC 6152 BODY).
//!
//! A command line (without its CRLF) becomes a [`Command`] or a reply from
//! the reply table. Verbs are case-insensitive; `MAIL FROM: <a>` with a space
//! after the colon is tolerated as most MTAs do. Addresses are parsed by
//! [`super::address`], so a `Command` never holds an invalid path.

use super::address::{parse_path, Address, AddressError};
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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail(Option<Address>, MailParams),
    /// `RCPT TO:<postmaster>` without a domain is allowed (RFC 5321 §4.5.1):
    /// it is `Rcpt(None)`.
    Rcpt(Option<Address>),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    Auth(String),
}

/// Decodes one command line.
pub fn parse_command(line: &[u8]) -> Result<Command, Reply> {
    let line = std::str::from_utf8(line).map_err(|_| reply::SYNTAX_PARAMS)?;
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], line[i + 1..].trim()),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    match verb.as_str() {
        "HELO" | "EHLO" => {
            let name = rest.split_whitespace().next().unwrap_or("");
            if name.is_empty() || name.len() > 255 {
                return Err(reply::SYNTAX_HELO);
            }
            Ok(if verb == "HELO" {
                Command::Helo(name.to_string())
            } else {
                Command::Ehlo(name.to_string())
            })
        }
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_args(rest, Command::Data),
        "RSET" => no_args(rest, Command::Rset),
        "QUIT" => no_args(rest, Command::Quit),
        "STARTTLS" => no_args(rest, Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" | "EXPN" => Ok(Command::Vrfy),
        "AUTH" => Ok(Command::Auth(rest.to_string())),
        _ => Err(reply::UNKNOWN_COMMAND),
    }
}

fn no_args(rest: &str, cmd: Command) -> Result<Command, Reply> {
    if rest.is_empty() {
        Ok(cmd)
    } else {
        Err(reply::SYNTAX_PARAMS)
    }
}

/// Splits `FROM:<path> params` into the path and its parameters.
fn split_path<'a>(rest: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    // `get`: a multi-byte character may straddle the prefix's length.
    if !rest
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    {
        return None;
    }
    let after = rest[prefix.len()..].trim_start();
    if !after.starts_with('<') {
        return None;
    }
    // The path ends at the first '>' outside a quoted string.
    let bytes = after.as_bytes();
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some((&after[..=i], after[i + 1..].trim())),
            _ => {}
        }
        i += 1;
    }
    None
}

fn parse_mail(rest: &str) -> Result<Command, Reply> {
    let (path, params) = split_path(rest, "FROM:").ok_or(reply::SYNTAX_MAIL)?;
    let sender = parse_path(path).map_err(|e| match e {
        AddressError::NonAscii => reply::NON_ASCII,
        _ => reply::BAD_SENDER,
    })?;
    let mut out = MailParams {
        size: None,
        body: Body::SevenBit,
    };
    for param in params.split_whitespace() {
        let (key, value) = param.split_once('=').unwrap_or((param, ""));
        match key.to_ascii_uppercase().as_str() {
            "SIZE" => out.size = Some(value.parse().map_err(|_| reply::SYNTAX_PARAMS)?),
            "BODY" => {
                out.body = match value.to_ascii_uppercase().as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    _ => return Err(reply::SYNTAX_PARAMS),
                }
            }
            _ => return Err(reply::UNKNOWN_PARAMETER),
        }
    }
    Ok(Command::Mail(sender, out))
}

fn parse_rcpt(rest: &str) -> Result<Command, Reply> {
    let (path, params) = split_path(rest, "TO:").ok_or(reply::SYNTAX_RCPT)?;
    if !params.is_empty() {
        return Err(reply::UNKNOWN_PARAMETER);
    }
    if path.eq_ignore_ascii_case("<postmaster>") {
        return Ok(Command::Rcpt(None));
    }
    match parse_path(path) {
        Ok(Some(a)) => Ok(Command::Rcpt(Some(a))),
        Ok(None) => Err(reply::BAD_RECIPIENT),
        Err(AddressError::NonAscii) => Err(reply::NON_ASCII),
        Err(_) => Err(reply::BAD_RECIPIENT),
    }
}

#[cfg(test)]
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
    fn rcpt() {
        assert_eq!(
            parse_command(b"RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt(None))
        );
        assert_eq!(parse_command(b"RCPT TO:<>"), Err(reply::BAD_RECIPIENT));
        assert!(matches!(
            parse_command(b"rcpt to:<x@y.example>"),
            Ok(Command::Rcpt(Some(_)))
        ));
        assert_eq!(
            parse_command(b"RCPT TO:<\"a>b\"@y.example>").map(|_| ()),
            Ok(())
        );
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
    }
}
