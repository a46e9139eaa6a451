//! Driver for the sender rewriting of issue 14 (`sender_rewrite`): the
//! streaming `From:`/`Sender:` rewriter over message bytes a LAN client
//! sent, the address-list scanner, and the `sender_rewrite` file parser.
//!
//! Input: one byte of chunk size (1 + byte), then the message.
//!
//! Properties: the output does not depend on where the input was cut; the
//! body after the first empty line comes out byte for byte; replacing each
//! addr-spec with itself gives the value back unchanged; a field with no
//! `From`/`Sender` name is never touched; the rules parser reports lines
//! that exist.

use std::rc::Rc;

use crate::config::Config;
use crate::rewrite::header::{rewrite_addresses, HeaderRewriter};
use crate::rewrite::RewriteTable;

use super::Input;

fn table() -> RewriteTable {
    let cfg = Config {
        local_domains: vec!["localhost".into(), "router.lan".into()],
        qualify_domain: "router.lan".into(),
        sender_address: crate::smtp::address::Address::parse_mailbox("me@example.com").ok(),
        ..Config::default()
    };
    let (rules, _) =
        RewriteTable::parse_rules("root root-alerts@example.com\n@x.test x@example.com\n");
    RewriteTable::new(&cfg, rules)
}

fn run(message: &[u8], chunk: usize) -> Vec<u8> {
    let mut rw = HeaderRewriter::new(Rc::new(table()));
    let mut out = Vec::new();
    for piece in message.chunks(chunk.max(1)) {
        rw.push(piece, &mut out);
    }
    rw.finish(&mut out);
    out
}

/// Offset just past the first empty line (`\n\n` or `\n\r\n`, or one at
/// the very start), if any.
fn body_start(m: &[u8]) -> Option<usize> {
    if m.starts_with(b"\n") {
        return Some(1);
    }
    if m.starts_with(b"\r\n") {
        return Some(2);
    }
    (0..m.len()).find_map(|i| match &m[i..] {
        [b'\n', b'\n', ..] => Some(i + 2),
        [b'\n', b'\r', b'\n', ..] => Some(i + 3),
        _ => None,
    })
}

pub fn sender_rewrite(data: &[u8]) {
    let mut input = Input::new(data);
    let chunk = 1 + usize::from(input.byte());
    let message = input.rest();

    let whole = run(message, message.len().max(1));
    assert_eq!(run(message, chunk), whole, "output depends on the chunking");
    if let Some(start) = body_start(message) {
        let body = &message[start..];
        assert!(whole.ends_with(body), "the body was changed");
    }

    // Identity: each addr-spec replaced with itself.
    if let Some(same) = rewrite_addresses(message, &mut |t| Some(t.to_string())) {
        assert_eq!(same, message, "identity replacement changed the value");
    }

    // The rules parser names only lines that exist.
    let text = String::from_utf8_lossy(message);
    let lines = text.lines().count();
    let (_, errors) = RewriteTable::parse_rules(&text);
    assert!(errors.iter().all(|e| e.line >= 1 && e.line <= lines));
}
