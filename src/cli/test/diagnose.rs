//! `tern test`'s diagnosis: from what happened (the typed outcome and what
//! the driver saw, [`Evidence`]) and the route's configuration
//! ([`RouteFacts`]) to the setting to change ([`Diagnosis`]).
//!
//! One pure function over one table ([`TABLE`]): rows are tried in order
//! and the first whose predicate holds names the case. The README's
//! diagnosis table is this table.
//!
//! The server's own words are read only where providers put the meaning
//! nowhere else ("basic authentication is disabled", "SendAsDenied",
//! "sender address rejected: not owned by user"); tern's own reasons are
//! recognized by their origin and the evidence, never by their text.

use crate::config::SmarthostTls;
use crate::delivery::outcome::{Origin, Reason, Status};
use crate::tls::TlsProblem;

pub use crate::smtp::client::Stage;

/// What the driver saw on the last connection, with the outcome's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    pub reason: Reason,
    /// The command the first refusal of the session answered.
    pub stage: Option<Stage>,
    /// The TLS failure, as a type.
    pub tls: Option<TlsProblem>,
    /// A connection was made and the server sent nothing at all.
    pub silent: bool,
    /// The port of the last connection.
    pub port: Option<u16>,
    /// The last EHLO reply listed STARTTLS (`None`: no EHLO reply).
    pub starttls_offered: Option<bool>,
}

/// The route's configuration as far as the diagnosis needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteFacts {
    pub smarthost: bool,
    pub smarthost_tls: SmarthostTls,
    /// smarthost_user and a readable password file.
    pub credentials: bool,
    /// A verifying TLS configuration (CA certificates) could be built.
    pub trust_anchors: bool,
}

/// Which row of the table matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Case {
    BasicAuthDisabled,
    TooManyLogins,
    WrongPassword,
    StartTlsRequired,
    AuthRequired,
    SenderRefused,
    HeloRefused,
    StartTlsRefused,
    RelayDenied,
    RecipientUnknown,
    GreetingRefused,
    ImplicitTlsPort,
    SilentServer,
    PlaintextServer,
    NoTrustAnchors,
    UnknownIssuer,
    ClockBehind,
    CertificateExpired,
    NameMismatch,
    StartTlsNotOffered,
    OtherTls,
    ConnectFailed,
    NoSuchDomain,
    DnsFailed,
    Timeout,
    TemporaryRefusal,
    PermanentRefusal,
    Other,
}

/// What to tell the user: what went wrong, the setting to change (a
/// configuration key; `None` when the fix is elsewhere) and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    pub case: Case,
    pub summary: &'static str,
    pub setting: Option<&'static str>,
    pub advice: &'static str,
}

/// One row of the table.
pub struct Row {
    pub case: Case,
    pub applies: fn(&Evidence, &RouteFacts) -> bool,
    pub summary: &'static str,
    pub setting: Option<&'static str>,
    pub advice: &'static str,
}

const CREDENTIALS: &str = "smarthost_user, smarthost_password_file";

/// The diagnosis table, tried in order.
pub const TABLE: &[Row] = &[
    Row {
        case: Case::BasicAuthDisabled,
        applies: |e, _| {
            remote(e)
                && (status_is(e, 5, 7, 139)
                    || said(e, "basic authentication is disabled")
                    || said(e, "SmtpClientAuthentication is disabled")
                    || (e.stage == Some(Stage::Auth)
                        && (status_is(e, 5, 7, 9) || status_is(e, 5, 7, 14))))
        },
        summary: "the provider has turned password (basic) authentication off for this account",
        setting: Some("smarthost_password_file"),
        advice: "Use OAuth2: register an app with the provider, run `tern oauth login \
                 --provider google|microsoft --client-id ID`, and set smarthost_auth = xoauth2 \
                 with smarthost_oauth_token_url, smarthost_oauth_client_id and \
                 smarthost_oauth_refresh_token_file (or smarthost_oauth_token_command). Or an \
                 app password: Gmail: turn on 2-Step Verification, create an app password and \
                 put it in smarthost_password_file; Microsoft 365: an administrator must enable \
                 \"Authenticated SMTP\" (SMTP AUTH) for the mailbox, then use an app password \
                 if the account has multi-factor authentication.",
    },
    Row {
        case: Case::TooManyLogins,
        applies: |e, _| remote(e) && e.stage == Some(Stage::Auth) && e.reason.code / 100 == 4,
        summary: "the server refuses logins for now (too many attempts or sessions)",
        setting: None,
        advice: "wait a few minutes before trying again (tern's queue retries by itself); \
                 check that no other device logs in to this account with an old password.",
    },
    Row {
        case: Case::WrongPassword,
        applies: |e, _| remote(e) && e.stage == Some(Stage::Auth),
        summary: "the server refused the user name or password",
        setting: Some(CREDENTIALS),
        advice: "smarthost_user is usually the full mail address; the password is the first \
                 line of smarthost_password_file. Providers with 2-step login need an app \
                 password there.",
    },
    Row {
        case: Case::StartTlsRequired,
        applies: |e, f| {
            remote(e)
                && e.reason.code / 100 != 2
                && (said(e, "STARTTLS") || (said(e, "TLS") && e.reason.code == 530))
                && !(f.smarthost && f.smarthost_tls == SmarthostTls::Tls)
        },
        summary: "the server wants TLS before it takes mail or a password",
        setting: Some("smarthost_tls"),
        advice: "set smarthost_tls = starttls (port 587) or smarthost_tls = tls (port 465).",
    },
    Row {
        case: Case::AuthRequired,
        applies: |e, _| {
            remote(e)
                && matches!(e.stage, Some(Stage::Mail | Stage::Rcpt))
                && (e.reason.code == 530 || status_is(e, 5, 7, 0) || said(e, "authenticat"))
        },
        summary: "the server wants a login (AUTH) before it takes mail",
        setting: Some(CREDENTIALS),
        advice: "set smarthost_user and smarthost_password_file to the account's login.",
    },
    Row {
        case: Case::SenderRefused,
        applies: |e, _| {
            remote(e)
                && (status_is(e, 5, 7, 60)
                    || said(e, "SendAsDenied")
                    || said(e, "not owned")
                    || said(e, "sender address rejected")
                    || (e.stage == Some(Stage::Mail) && e.reason.code / 100 == 5))
        },
        summary: "the server does not let this account send with this sender address",
        setting: Some("sender_address, sender_rewrite"),
        advice: "set sender_address to the smarthost account's own address (or add a \
                 sender_rewrite line for this sender); `tern test -f ADDRESS` tries a sender.",
    },
    Row {
        case: Case::HeloRefused,
        applies: |e, _| remote(e) && e.stage == Some(Stage::Ehlo),
        summary: "the server refused the name tern introduced itself with (EHLO)",
        setting: Some("helo_name"),
        advice: "set helo_name to a fully qualified name (router.example.com); providers \
                 refuse localhost and names without a dot.",
    },
    Row {
        case: Case::StartTlsRefused,
        applies: |e, _| remote(e) && e.stage == Some(Stage::StartTls),
        summary: "the server offered STARTTLS but refused to start it",
        setting: Some("smarthost_tls"),
        advice: "the server's TLS is out of order: try again later, or use its implicit-TLS \
                 port (465) with smarthost_tls = tls.",
    },
    Row {
        case: Case::RelayDenied,
        applies: |e, _| {
            remote(e) && e.stage == Some(Stage::Rcpt) && (status_is(e, 5, 7, 1) || said(e, "relay"))
        },
        summary: "the server does not relay this mail for this client",
        setting: Some(CREDENTIALS),
        advice: "a smarthost relays for logged-in clients: set smarthost_user and \
                 smarthost_password_file; an MX only takes mail for its own domains.",
    },
    Row {
        case: Case::RecipientUnknown,
        applies: |e, _| {
            remote(e)
                && e.stage == Some(Stage::Rcpt)
                && e.reason.code / 100 == 5
                && e.reason.status.subject == 1
        },
        summary: "the server says the recipient address does not exist",
        setting: None,
        advice: "check the ADDRESS given to tern test.",
    },
    Row {
        case: Case::GreetingRefused,
        applies: |e, _| remote(e) && e.stage == Some(Stage::Greeting),
        summary: "the server refused the session at its greeting",
        setting: Some("smarthost"),
        advice: "4xx: the server is busy, try later; 5xx: this IP address is not welcome \
                 (home IP addresses are often blocklisted): relay through your provider's \
                 smarthost.",
    },
    Row {
        case: Case::ImplicitTlsPort,
        applies: |e, f| {
            e.silent
                && e.port == Some(crate::delivery::outcome::IMPLICIT_TLS_PORT)
                && f.smarthost_tls != SmarthostTls::Tls
        },
        summary: "port 465 speaks implicit TLS: the server waited for a TLS hello",
        setting: Some("smarthost_tls"),
        advice: "port 465 speaks implicit TLS; set smarthost_tls = tls (or use port 587 \
                 with smarthost_tls = starttls).",
    },
    Row {
        case: Case::SilentServer,
        applies: |e, f| {
            e.silent && e.reason.origin == Origin::Timeout && f.smarthost_tls != SmarthostTls::Tls
        },
        summary: "the server sent no greeting: does it speak implicit TLS on this port?",
        setting: Some("smarthost_tls"),
        advice: "if the port speaks implicit TLS (like 465), set smarthost_tls = tls; \
                 otherwise check the host and port in smarthost.",
    },
    Row {
        case: Case::PlaintextServer,
        applies: |e, _| e.tls == Some(TlsProblem::NotTls),
        summary: "the server speaks plain SMTP first: this port has no implicit TLS",
        setting: Some("smarthost_tls"),
        advice: "set smarthost_tls = starttls (or use the provider's implicit-TLS port, 465).",
    },
    Row {
        case: Case::NoTrustAnchors,
        applies: |e, f| e.reason.origin == Origin::Tls && !f.trust_anchors,
        summary: "no CA certificates to verify the server with",
        setting: Some("tls_ca_file"),
        advice: "install the CA bundle (ca-certificates / ca-bundle), point tls_ca_file at a \
                 PEM bundle, or use a tern built with --features bundled-roots.",
    },
    Row {
        case: Case::UnknownIssuer,
        applies: |e, _| e.tls == Some(TlsProblem::UnknownIssuer),
        summary: "the server's certificate is signed by a CA tern does not trust",
        setting: Some("tls_ca_file"),
        advice: "point tls_ca_file at a bundle with the server's CA (or the system bundle), \
                 install ca-certificates, or use a tern built with --features bundled-roots.",
    },
    Row {
        case: Case::ClockBehind,
        applies: |e, _| e.tls == Some(TlsProblem::NotYetValid),
        summary: "the server's certificate is not valid yet: this host's clock is wrong",
        setting: None,
        advice: "set the system clock: enable NTP (OpenWrt: System > Time Synchronization; \
                 or `ntpd -q -p pool.ntp.org`). Mail is deferred, not lost, until then.",
    },
    Row {
        case: Case::CertificateExpired,
        applies: |e, _| e.tls == Some(TlsProblem::Expired),
        summary: "the server's certificate has expired (or this host's clock is ahead)",
        setting: None,
        advice: "check the system clock (NTP); if it is right, the provider must renew \
                 its certificate.",
    },
    Row {
        case: Case::NameMismatch,
        applies: |e, _| e.tls == Some(TlsProblem::NameMismatch),
        summary: "the server's certificate does not carry the host name tern connected to",
        setting: Some("smarthost"),
        advice: "use the host name the provider documents (the one in its certificate), \
                 not an IP address or an alias.",
    },
    Row {
        case: Case::StartTlsNotOffered,
        applies: |e, _| {
            e.reason.origin == Origin::Tls && e.tls.is_none() && e.starttls_offered == Some(false)
        },
        summary: "TLS is required but the server does not offer STARTTLS",
        setting: Some("smarthost_tls"),
        advice: "check the port in smarthost (587 offers STARTTLS); for port 465 set \
                 smarthost_tls = tls.",
    },
    Row {
        case: Case::OtherTls,
        applies: |e, _| e.reason.origin == Origin::Tls,
        summary: "the TLS handshake with the server failed",
        setting: Some("smarthost_tls"),
        advice: "check the port and smarthost_tls: 587 with starttls, 465 with tls.",
    },
    Row {
        case: Case::ConnectFailed,
        applies: |e, _| e.reason.origin == Origin::Connect,
        summary: "tern cannot connect to the next hop",
        setting: Some("smarthost"),
        advice: "check the host and port in smarthost (587 or 465 for providers); many \
                 networks block outgoing port 25, so direct MX delivery needs a smarthost.",
    },
    Row {
        case: Case::NoSuchDomain,
        applies: |e, f| e.reason.origin == Origin::Dns && !f.smarthost && e.reason.is_permanent(),
        summary: "the recipient's domain has no mail server",
        setting: None,
        advice: "check the ADDRESS given to tern test.",
    },
    Row {
        case: Case::DnsFailed,
        applies: |e, _| e.reason.origin == Origin::Dns,
        summary: "the DNS lookup for the next hop failed",
        setting: Some("smarthost, dns_servers"),
        advice: "check the host name in smarthost and that dns_servers (or \
                 /etc/resolv.conf) names a working resolver.",
    },
    Row {
        case: Case::Timeout,
        applies: |e, _| e.reason.origin == Origin::Timeout,
        summary: "the server stopped answering",
        setting: Some("client_timeout"),
        advice: "try again; a firewall may drop the connection, or the server is slow \
                 (client_timeout).",
    },
    Row {
        case: Case::TemporaryRefusal,
        applies: |e, _| remote(e) && e.reason.code / 100 == 4,
        summary: "the server refused for now (a temporary error)",
        setting: None,
        advice: "try again later; tern's queue retries by itself.",
    },
    Row {
        case: Case::PermanentRefusal,
        applies: |e, _| remote(e),
        summary: "the server refused the message",
        setting: None,
        advice: "read the server's reply above; it names the policy it applied.",
    },
];

const OTHER: Diagnosis = Diagnosis {
    case: Case::Other,
    summary: "the delivery failed",
    setting: None,
    advice: "read the dialogue above.",
};

/// The first row of [`TABLE`] that applies.
pub fn diagnose(e: &Evidence, facts: &RouteFacts) -> Diagnosis {
    TABLE
        .iter()
        .find(|row| (row.applies)(e, facts))
        .map_or(OTHER, |row| Diagnosis {
            case: row.case,
            summary: row.summary,
            setting: row.setting,
            advice: row.advice,
        })
}

fn remote(e: &Evidence) -> bool {
    matches!(e.reason.origin, Origin::Remote { .. })
}

fn status_is(e: &Evidence, class: u8, subject: u16, detail: u16) -> bool {
    e.reason.status == Status::new(class, subject, detail)
}

/// The server's text contains `words` (ASCII case-insensitive).
fn said(e: &Evidence, words: &str) -> bool {
    e.reason
        .text
        .to_ascii_lowercase()
        .contains(&words.to_ascii_lowercase())
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)]
mod tests {
    use super::*;
    use crate::delivery::outcome;

    const RELAY: &str = "smtp.example[192.0.2.1]:587";

    fn facts() -> RouteFacts {
        RouteFacts {
            smarthost: true,
            smarthost_tls: SmarthostTls::StartTls,
            credentials: true,
            trust_anchors: true,
        }
    }

    fn evidence(reason: Reason) -> Evidence {
        Evidence {
            reason,
            stage: None,
            tls: None,
            silent: false,
            port: Some(587),
            starttls_offered: Some(true),
        }
    }

    fn said_at(stage: Stage, code: u16, status: &str, text: &str) -> Evidence {
        Evidence {
            stage: Some(stage),
            ..evidence(Reason::remote(RELAY, code, Status::parse(status), text))
        }
    }

    fn case(e: &Evidence, f: &RouteFacts) -> (Case, Option<&'static str>) {
        let d = diagnose(e, f);
        (d.case, d.setting)
    }

    #[test]
    fn auth_cases() {
        let f = facts();
        let ms = said_at(
            Stage::Auth,
            535,
            "5.7.139",
            "Authentication unsuccessful, basic authentication is disabled.",
        );
        assert_eq!(
            case(&ms, &f),
            (Case::BasicAuthDisabled, Some("smarthost_password_file"))
        );
        let d = diagnose(&ms, &f);
        assert!(d.advice.contains("OAuth2") && d.advice.contains("app password"));
        assert!(d.advice.contains("tern oauth login") && !d.advice.contains("not support"));
        let gmail = said_at(
            Stage::Auth,
            534,
            "5.7.9",
            "Application-specific password required.",
        );
        assert_eq!(case(&gmail, &f).0, Case::BasicAuthDisabled);
        let busy = said_at(Stage::Auth, 454, "4.7.0", "Too many login attempts");
        assert_eq!(case(&busy, &f), (Case::TooManyLogins, None));
        let wrong = said_at(Stage::Auth, 535, "5.7.8", "bad credentials");
        assert_eq!(case(&wrong, &f), (Case::WrongPassword, Some(CREDENTIALS)));
        let needed = said_at(Stage::Mail, 530, "5.7.0", "Authentication required");
        assert_eq!(case(&needed, &f), (Case::AuthRequired, Some(CREDENTIALS)));
    }

    #[test]
    fn sender_cases() {
        let f = facts();
        let setting = Some("sender_address, sender_rewrite");
        for e in [
            said_at(
                Stage::Mail,
                553,
                "5.7.1",
                "<root@router.lan>: Sender address rejected: not owned by user u",
            ),
            // Postfix rejects at RCPT (smtpd_delay_reject).
            said_at(
                Stage::Rcpt,
                553,
                "5.7.1",
                "<root@router.lan>: Sender address rejected: not owned by user u",
            ),
            said_at(
                Stage::Dot,
                550,
                "5.7.60",
                "SMTP; Client does not have permissions to send as this sender",
            ),
            said_at(
                Stage::Dot,
                554,
                "5.2.252",
                "SendAsDenied; me@x.com not allowed to send as root@router.lan",
            ),
            said_at(Stage::Mail, 550, "5.1.8", "bad sender domain"),
        ] {
            assert_eq!(case(&e, &f), (Case::SenderRefused, setting), "{e:?}");
        }
    }

    #[test]
    fn tls_required_helo_relay_recipient_greeting() {
        let mut f = facts();
        f.smarthost_tls = SmarthostTls::None;
        let e = said_at(
            Stage::Mail,
            530,
            "5.7.0",
            "Must issue a STARTTLS command first",
        );
        assert_eq!(
            case(&e, &f),
            (Case::StartTlsRequired, Some("smarthost_tls"))
        );
        let f = facts();
        let e = said_at(Stage::Ehlo, 501, "5.5.4", "localhost: invalid domain name");
        assert_eq!(case(&e, &f), (Case::HeloRefused, Some("helo_name")));
        let e = said_at(Stage::StartTls, 454, "4.7.0", "TLS not available");
        assert_eq!(case(&e, &f), (Case::StartTlsRefused, Some("smarthost_tls")));
        let e = said_at(Stage::Rcpt, 554, "5.7.1", "Relay access denied");
        assert_eq!(case(&e, &f), (Case::RelayDenied, Some(CREDENTIALS)));
        let e = said_at(Stage::Rcpt, 550, "5.1.1", "no such user");
        assert_eq!(case(&e, &f), (Case::RecipientUnknown, None));
        let e = said_at(Stage::Greeting, 554, "5.7.1", "your IP is listed");
        assert_eq!(case(&e, &f), (Case::GreetingRefused, Some("smarthost")));
        let e = said_at(Stage::Dot, 451, "4.3.0", "try later");
        assert_eq!(case(&e, &f), (Case::TemporaryRefusal, None));
        let e = said_at(Stage::Dot, 554, "5.6.0", "spam");
        assert_eq!(case(&e, &f), (Case::PermanentRefusal, None));
    }

    #[test]
    fn tls_mode_cases() {
        let f = facts();
        let peer = "smtp.example[192.0.2.1]:465";
        let silent_465 = Evidence {
            silent: true,
            port: Some(465),
            starttls_offered: None,
            ..evidence(outcome::tls_implicit_port(peer))
        };
        let d = diagnose(&silent_465, &f);
        assert_eq!(
            (d.case, d.setting),
            (Case::ImplicitTlsPort, Some("smarthost_tls"))
        );
        assert!(d.advice.contains("set smarthost_tls = tls"), "{}", d.advice);
        let silent_other = Evidence {
            silent: true,
            port: Some(2525),
            starttls_offered: None,
            ..evidence(outcome::timeout(peer, "the greeting"))
        };
        assert_eq!(case(&silent_other, &f).0, Case::SilentServer);
        let mut tls = facts();
        tls.smarthost_tls = SmarthostTls::Tls;
        let plain = Evidence {
            tls: Some(TlsProblem::NotTls),
            starttls_offered: None,
            ..evidence(outcome::tls_plaintext_greeting(peer))
        };
        let d = diagnose(&plain, &tls);
        assert_eq!(
            (d.case, d.setting),
            (Case::PlaintextServer, Some("smarthost_tls"))
        );
        assert!(d.advice.contains("starttls"));
        let not_offered = Evidence {
            starttls_offered: Some(false),
            ..evidence(outcome::smtp_client(
                Origin::Tls,
                peer,
                454,
                Status::new(4, 7, 0),
                "TLS required but STARTTLS not offered",
            ))
        };
        assert_eq!(
            case(&not_offered, &f),
            (Case::StartTlsNotOffered, Some("smarthost_tls"))
        );
    }

    #[test]
    fn certificate_cases() {
        let f = facts();
        let failed = |p| Evidence {
            tls: Some(p),
            ..evidence(outcome::tls_failed(RELAY, "certificate verify failed"))
        };
        assert_eq!(
            case(&failed(TlsProblem::UnknownIssuer), &f),
            (Case::UnknownIssuer, Some("tls_ca_file"))
        );
        let clock = diagnose(&failed(TlsProblem::NotYetValid), &f);
        assert_eq!((clock.case, clock.setting), (Case::ClockBehind, None));
        assert!(clock.advice.contains("NTP"));
        assert_eq!(
            case(&failed(TlsProblem::Expired), &f).0,
            Case::CertificateExpired
        );
        assert_eq!(
            case(&failed(TlsProblem::NameMismatch), &f),
            (Case::NameMismatch, Some("smarthost"))
        );
        assert_eq!(
            case(&failed(TlsProblem::Other), &f),
            (Case::OtherTls, Some("smarthost_tls"))
        );
        let mut none = facts();
        none.trust_anchors = false;
        let e = evidence(outcome::tls_no_trust_anchors());
        assert_eq!(case(&e, &none), (Case::NoTrustAnchors, Some("tls_ca_file")));
    }

    #[test]
    fn network_cases() {
        let f = facts();
        let e = evidence(outcome::connect_failed(
            "192.0.2.1:587",
            "connection refused",
        ));
        assert_eq!(case(&e, &f), (Case::ConnectFailed, Some("smarthost")));
        let e = evidence(outcome::connect_timeout("192.0.2.1:587"));
        assert_eq!(case(&e, &f).0, Case::ConnectFailed);
        let e = evidence(outcome::dns_temporary("smtp.example", "timeout"));
        assert_eq!(
            case(&e, &f),
            (Case::DnsFailed, Some("smarthost, dns_servers"))
        );
        let mut mx = facts();
        mx.smarthost = false;
        let e = evidence(outcome::dns_no_such_domain("nowhere.example"));
        assert_eq!(case(&e, &mx), (Case::NoSuchDomain, None));
        let e = evidence(outcome::timeout(RELAY, "the reply to DATA"));
        assert_eq!(case(&e, &f).0, Case::Timeout);
        let e = evidence(outcome::queue_file_unreadable("gone"));
        assert_eq!(case(&e, &f), (Case::Other, None));
    }

    #[test]
    fn rustls_errors_become_tls_problems() {
        use rustls::{CertificateError as C, Error as E, InvalidMessage};
        let of = |e: E| TlsProblem::of(&e);
        assert_eq!(
            of(E::InvalidCertificate(C::UnknownIssuer)),
            TlsProblem::UnknownIssuer
        );
        assert_eq!(
            of(E::InvalidCertificate(C::NotValidYet)),
            TlsProblem::NotYetValid
        );
        assert_eq!(of(E::InvalidCertificate(C::Expired)), TlsProblem::Expired);
        assert_eq!(
            of(E::InvalidCertificate(C::NotValidForName)),
            TlsProblem::NameMismatch
        );
        assert_eq!(
            of(E::InvalidMessage(InvalidMessage::InvalidContentType)),
            TlsProblem::NotTls
        );
        assert_eq!(of(E::DecryptError), TlsProblem::Other);
    }

    #[test]
    fn every_row_is_reachable_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for row in TABLE {
            assert!(seen.insert(row.case), "{:?} twice", row.case);
            assert!(!row.summary.is_empty() && !row.advice.is_empty());
        }
    }
}
