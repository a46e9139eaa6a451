//! Delivery: where each recipient goes, and local delivery itself.
//!
//! Routing (SPEC "Route"): an address without a domain, or with a local
//! domain, is a local mailbox; anything else is remote (smarthost or MX,
//! see [`crate::outbound`]). Aliases are expanded when the message is
//! received (as OpenSMTPD does), so the envelope stores final targets and a
//! change to `/etc/aliases` applies to new mail.
//!
//! Local delivery writes to Maildir (`mail_dir/USER/{tmp,new,cur}`) or mbox
//! (`mail_dir/USER`), prefixed with `Return-Path:` and `Delivered-To:`. The
//! content is streamed from the spool file through a fixed buffer, never
//! read whole into memory.

pub mod aliases;
pub mod lf;
pub mod local;
pub mod maildir;
pub mod mbox;

/// Local parts that can name a mailbox directory safely: no path
/// separators, no leading dot, nothing outside a conservative set.
pub fn mailbox_name(local: &str) -> Option<String> {
    let user = match local.find('+') {
        Some(i) if i > 0 => &local[..i],
        _ => local,
    };
    let user = user.to_ascii_lowercase();
    let ok = !user.is_empty()
        && user.len() <= 64
        && !user.starts_with('.')
        && !user.starts_with('-')
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(user)
}

/// Where a stored recipient address goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// A local mailbox (the user name).
    Local(String),
    /// A remote domain.
    Remote(String),
}

pub fn route(address: &str, is_local_domain: &dyn Fn(&str) -> bool) -> Route {
    match address.rsplit_once('@') {
        None => Route::Local(address.to_string()),
        Some((local, domain)) if is_local_domain(domain) => Route::Local(local.to_string()),
        Some((_, domain)) => Route::Remote(domain.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_names() {
        assert_eq!(mailbox_name("Joe+lists").as_deref(), Some("joe"));
        assert_eq!(mailbox_name("a.b_c-d").as_deref(), Some("a.b_c-d"));
        for bad in ["../etc", ".hidden", "a/b", "", "-rf", "sp ace", "x%y"] {
            assert_eq!(mailbox_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn routes() {
        let local = |d: &str| d == "localhost";
        assert_eq!(route("root", &local), Route::Local("root".into()));
        assert_eq!(route("joe@localhost", &local), Route::Local("joe".into()));
        assert_eq!(
            route("joe@Example.com", &local),
            Route::Remote("example.com".into())
        );
    }
}
