//! Driver for the `routes` file (issue 14 part 2; target `routes`):
//! `RouteTable::parse` on arbitrary text, then `route_for` and `is_local`
//! for senders and recipient domains from the input and from the table's
//! own lines (exact, upper-cased, with a trailing dot, one label deeper).
//!
//! Input: the file's text, then optionally a NUL and query lines
//! `SENDER DOMAIN` (a sender that does not parse as a mailbox is the null
//! sender, as the daemon only ever passes a printed address or `""`).
//!
//! Properties: every error's line exists, errors and routes are in line
//! order, one per line; a line is a route or an error exactly when it is
//! neither blank nor a comment; matched domains are valid and lower-case;
//! `route_for` returns the first route a plain model of the documented
//! rules matches (`@domain` exactly, `.domain` strict subdomains,
//! `from:ADDRESS`, `from:@domain`, `*`, ASCII case-insensitively, one
//! trailing dot of the recipient domain ignored), and `is_local` is true
//! exactly when that route's target is `local`.
//!
//! Not checked: credentials in Debug output. A relay holds only the
//! password file's path, never a password (`Relay::credentials` reads it
//! at each attempt), so there is no secret to leak.

use crate::routes::{Match, Route, RouteChoice, RouteTable, Target};
use crate::smtp::address::{is_valid_domain, Address};

use super::text;

/// Queries per input, so one input stays fast.
const MAX_QUERIES: usize = 200;

pub fn routes(data: &[u8]) {
    let (file, queries) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &data[data.len()..]),
    };
    let file = text(file);
    let (table, errors) = RouteTable::parse(&file);
    check_lines(&file, &table, &errors);
    for r in table.routes() {
        check_matcher(&r.matcher);
    }

    let mut senders: Vec<String> = vec![String::new()];
    let mut domains: Vec<String> = Vec::new();
    for line in text(queries).lines() {
        let (s, d) = line.split_once(' ').unwrap_or((line, ""));
        senders.push(printed_sender(s));
        domains.push(d.to_string());
    }
    for r in table.routes().iter().take(16) {
        match &r.matcher {
            Match::Domain(d) | Match::Subdomains(d) => {
                domains.push(d.clone());
                domains.push(d.to_ascii_uppercase());
                domains.push(format!("{d}."));
                domains.push(format!("a.{d}"));
                domains.push(format!("B.{}.", d.to_ascii_uppercase()));
                domains.push(format!("a{d}"));
            }
            Match::Sender(a) => {
                senders.push(printed_sender(&a.to_string()));
                senders.push(printed_sender(&a.to_string().to_ascii_uppercase()));
                domains.push(a.domain.clone());
            }
            Match::SenderDomain(d) => {
                // Printed like the daemon's senders: a 255-octet domain
                // makes no sender (the path would pass 256 octets).
                senders.push(printed_sender(&format!("u@{d}")));
                senders.push(printed_sender(&format!("U@{}", d.to_ascii_uppercase())));
                senders.push(printed_sender(&format!("u@a.{d}")));
                domains.push(d.clone());
            }
            Match::Any => {}
        }
    }
    domains.push(String::new());
    let mut n = 0;
    'outer: for s in &senders {
        for d in &domains {
            if n == MAX_QUERIES {
                break 'outer;
            }
            n += 1;
            check_query(&table, s, d);
        }
    }
}

/// What the daemon passes as the sender: a printed mailbox, or `""`.
fn printed_sender(s: &str) -> String {
    Address::parse_mailbox(s)
        .map(|a| a.to_string())
        .unwrap_or_default()
}

fn check_lines(file: &str, table: &RouteTable, errors: &[crate::routes::RouteError]) {
    let lines: Vec<&str> = file.lines().collect();
    let mut last = 0;
    for e in errors {
        assert!(
            e.line >= 1 && e.line <= lines.len(),
            "error line {} of {}",
            e.line,
            lines.len()
        );
        assert!(
            e.line > last,
            "errors out of order: {} after {last}",
            e.line
        );
        last = e.line;
    }
    let mut last = 0;
    for r in table.routes() {
        assert!(
            r.line >= 1 && r.line <= lines.len(),
            "route line {}",
            r.line
        );
        assert!(
            r.line > last,
            "routes out of order: {} after {last}",
            r.line
        );
        last = r.line;
    }
    for (index, raw) in lines.iter().enumerate() {
        let line = index + 1;
        let content = match raw.find('#') {
            Some(hash) => &raw[..hash],
            None => raw,
        }
        .trim();
        let is_route = table.routes().iter().any(|r| r.line == line);
        let is_error = errors.iter().any(|e| e.line == line);
        if content.is_empty() {
            assert!(
                !is_route && !is_error,
                "blank or comment line {line} reported: {raw:?}"
            );
        } else {
            assert!(
                is_route != is_error,
                "line {line} {raw:?}: route {is_route}, error {is_error}"
            );
        }
    }
}

fn check_matcher(m: &Match) {
    let domain = |d: &str| {
        assert!(is_valid_domain(d), "matched domain {d:?} is not valid");
        assert_eq!(d, d.to_ascii_lowercase(), "matched domain not lower-case");
    };
    match m {
        Match::Domain(d) | Match::Subdomains(d) | Match::SenderDomain(d) => domain(d),
        Match::Sender(a) => domain(&a.domain),
        Match::Any => {}
    }
}

/// The documented rules, one route at a time.
fn model_matches(r: &Route, sender: &str, rcpt_domain: &str) -> bool {
    let domain = rcpt_domain
        .strip_suffix('.')
        .unwrap_or(rcpt_domain)
        .to_ascii_lowercase();
    let sender = Address::parse_mailbox(sender).ok();
    match &r.matcher {
        Match::Domain(d) => domain == *d,
        Match::Subdomains(d) => domain.len() > d.len() + 1 && domain.ends_with(&format!(".{d}")),
        Match::Sender(a) => sender.is_some_and(|s| {
            s.local.eq_ignore_ascii_case(&a.local) && s.domain.eq_ignore_ascii_case(&a.domain)
        }),
        Match::SenderDomain(d) => sender.is_some_and(|s| s.domain.eq_ignore_ascii_case(d)),
        Match::Any => true,
    }
}

fn check_query(table: &RouteTable, sender: &str, domain: &str) {
    let expected = table
        .routes()
        .iter()
        .find(|r| model_matches(r, sender, domain));
    let got = table.route_for(sender, domain);
    match (got, expected) {
        (RouteChoice::Default, None) => {}
        (RouteChoice::Route(g), Some(e)) => assert_eq!(
            g.line, e.line,
            "sender {sender:?} domain {domain:?}: route of line {} instead of line {}",
            g.line, e.line
        ),
        (got, expected) => panic!(
            "sender {sender:?} domain {domain:?}: got {got:?}, the rules give {:?}",
            expected.map(|r| r.line)
        ),
    }
    let local = expected.is_some_and(|r| r.target == Target::Local);
    assert_eq!(
        table.is_local(sender, domain),
        local,
        "is_local({sender:?}, {domain:?})"
    );
}
