use super::*;

fn parse(text: &str) -> Config {
    match Config::parse(text, "t.conf") {
        Ok(c) => c,
        Err(errors) => panic!("unexpected errors: {errors:?}"),
    }
}

fn errors(text: &str) -> Vec<ConfigError> {
    match Config::parse(text, "t.conf") {
        Ok(_) => panic!("expected errors for {text:?}"),
        Err(errors) => errors,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

// --- defaults --------------------------------------------------------------

#[test]
fn empty_text_is_the_default() {
    let c = parse("");
    assert_eq!(c, Config::default());
    assert_eq!(parse("# only a comment\n\n   \n\t# another\n"), c);
}

#[test]
fn defaults_match_the_spec() {
    let c = Config::default();
    assert!(!c.hostname.is_empty());
    assert_eq!(c.listen, vec!["127.0.0.1:25".parse().unwrap()]);
    assert!(c.submission_listen.is_empty() && c.smtps_listen.is_empty());
    assert_eq!(c.spool_dir, Path::new("/var/spool/tern"));
    assert!(c.spool_sync);
    assert_eq!(c.min_free_space, 1 << 20);
    assert_eq!(c.local_domains[0], "localhost");
    assert!(c.is_local_domain(&c.hostname.to_ascii_uppercase()));
    assert_eq!(c.mail_dir, Path::new("/var/mail"));
    assert_eq!(c.local_delivery, LocalDelivery::Maildir);
    assert_eq!(c.aliases, Path::new("/etc/aliases"));
    assert!(c.smarthost.is_empty());
    assert_eq!(c.smarthost_tls, SmarthostTls::StartTls);
    assert_eq!(c.outbound_tls, OutboundTls::Opportunistic);
    assert!(!c.hold_outbound);
    assert!(c.outbound_connection_reuse);
    assert_eq!(c.mx_port, 25);
    assert!(c.dns_servers.is_empty() && c.dns_timeout.is_none());
    assert_eq!(c.max_message_size, 10 << 20);
    assert_eq!((c.max_recipients, c.max_connections), (100, 100));
    assert_eq!((c.max_connections_per_ip, c.max_outbound), (20, 10));
    assert_eq!(
        (c.max_outbound_per_host, c.max_errors, c.hop_limit),
        (4, 10, 50)
    );
    assert_eq!(
        c.retry_schedule,
        [300, 600, 1800, 3600, 7200, 14400].map(secs).to_vec()
    );
    assert_eq!(c.max_queue_time, secs(5 * 86400));
    assert_eq!((c.server_timeout, c.client_timeout), (secs(300), secs(300)));
    assert_eq!(c.connect_timeout, secs(30));
    assert!(!c.allow_plaintext_auth);
    assert_eq!(c.pid_file, Path::new("/var/run/tern.pid"));
    assert_eq!(c.log_level, log::LevelFilter::Info);
    assert!(c.may_relay(ip("127.0.0.5")));
    assert!(c.may_relay(ip("::1")));
    assert!(c.may_relay(ip("::ffff:127.0.0.1")));
    assert!(!c.may_relay(ip("192.0.2.1")));
    assert!(!c.may_relay(ip("::2")));
}

// --- every key ---------------------------------------------------------------

#[test]
fn every_key_parses() {
    let c = parse(
        "hostname = mx1.Example.NET
listen = 0.0.0.0:25, [::]:25
submission_listen = [::1]:587
smtps_listen = 192.0.2.1:465
spool_dir = /tmp/spool
spool_sync = off
min_free_space = 0
local_domains = Example.net., mail.example.net
local_recipients = ANY
mail_dir = /home/mail
local_delivery = mbox
aliases =
relay_networks = 10.0.0.0/8, 192.168.1.0/24, fd00::/8, 203.0.113.7
smarthost = smtp.example.net:587, [2001:db8::1]:2525, 192.0.2.9, 2001:db8::2
smarthost_tls = TLS
smarthost_user = router@example.net
smarthost_password_file = /etc/tern/smarthost.pw
hold_outbound = true
outbound_connection_reuse = no
outbound_tls = required
mx_port = 2525
dns_servers = 192.0.2.53, 127.0.0.1:5353, [::1]:53, 2001:db8::53
dns_timeout = 3s
retry_schedule = 1m, 90, 2h, 1d
max_queue_time = 2d
tls_cert = /etc/tern/cert.pem
tls_key = /etc/tern/key.pem
tls_ca_file = /etc/ssl/ca.pem
users_file = /etc/tern/users
allow_plaintext_auth = 1
max_message_size = 25M
max_recipients = 50
max_connections = 30
max_connections_per_ip = 5
max_outbound = 3
max_outbound_per_host = 2
max_errors = 7
hop_limit = 30
server_timeout = 10m
client_timeout = 2m
connect_timeout = 15
user = nobody
pid_file = /run/tern.pid
log_file = /var/log/tern.log
log_level = Debug
",
    );
    assert_eq!(c.hostname, "mx1.Example.NET");
    assert_eq!(
        c.listen,
        vec!["0.0.0.0:25".parse().unwrap(), "[::]:25".parse().unwrap()]
    );
    assert_eq!(c.submission_listen, vec!["[::1]:587".parse().unwrap()]);
    assert_eq!(c.smtps_listen, vec!["192.0.2.1:465".parse().unwrap()]);
    assert_eq!(c.spool_dir, Path::new("/tmp/spool"));
    assert!(!c.spool_sync);
    assert_eq!(c.min_free_space, 0);
    assert_eq!(c.local_domains, vec!["example.net", "mail.example.net"]);
    assert!(c.is_local_domain("EXAMPLE.net."));
    assert!(!c.is_local_domain("localhost"));
    assert!(!c.is_local_domain("mx1.example.net"));
    assert_eq!(c.local_recipients, LocalRecipients::Any);
    assert_eq!(c.mail_dir, Path::new("/home/mail"));
    assert_eq!(c.local_delivery, LocalDelivery::Mbox);
    assert_eq!(c.aliases, PathBuf::new());
    assert_eq!(c.relay_networks.len(), 4);
    assert!(c.may_relay(ip("10.200.1.1")));
    assert!(c.may_relay(ip("192.168.1.254")));
    assert!(!c.may_relay(ip("192.168.2.1")));
    assert!(c.may_relay(ip("fd12::1")));
    assert!(c.may_relay(ip("203.0.113.7")));
    assert!(!c.may_relay(ip("203.0.113.8")));
    assert!(!c.may_relay(ip("127.0.0.1")));
    let hp = |host: &str, port| HostPort {
        host: host.into(),
        port,
    };
    assert_eq!(
        c.smarthost,
        vec![
            hp("smtp.example.net", 587),
            hp("2001:db8::1", 2525),
            hp("192.0.2.9", 25),
            hp("2001:db8::2", 25),
        ]
    );
    assert_eq!(c.smarthost[1].to_string(), "[2001:db8::1]:2525");
    assert_eq!(c.smarthost_tls, SmarthostTls::Tls);
    assert_eq!(c.smarthost_user.as_deref(), Some("router@example.net"));
    assert_eq!(
        c.smarthost_password_file.as_deref(),
        Some(Path::new("/etc/tern/smarthost.pw"))
    );
    assert!(c.hold_outbound);
    assert!(!c.outbound_connection_reuse);
    assert_eq!(c.outbound_tls, OutboundTls::Required);
    assert_eq!(c.mx_port, 2525);
    assert_eq!(
        c.dns_servers,
        [
            "192.0.2.53:53",
            "127.0.0.1:5353",
            "[::1]:53",
            "[2001:db8::53]:53"
        ]
        .map(|s| s.parse::<SocketAddr>().unwrap())
        .to_vec()
    );
    assert_eq!(c.dns_timeout, Some(secs(3)));
    assert_eq!(c.retry_schedule, [60, 90, 7200, 86400].map(secs).to_vec());
    assert_eq!(c.max_queue_time, secs(2 * 86400));
    assert_eq!(c.tls_cert.as_deref(), Some(Path::new("/etc/tern/cert.pem")));
    assert_eq!(c.tls_key.as_deref(), Some(Path::new("/etc/tern/key.pem")));
    assert_eq!(c.tls_ca_file.as_deref(), Some(Path::new("/etc/ssl/ca.pem")));
    assert_eq!(c.users_file.as_deref(), Some(Path::new("/etc/tern/users")));
    assert!(c.allow_plaintext_auth);
    assert_eq!(c.max_message_size, 25 << 20);
    assert_eq!((c.max_recipients, c.max_connections), (50, 30));
    assert_eq!((c.max_connections_per_ip, c.max_outbound), (5, 3));
    assert_eq!(
        (c.max_outbound_per_host, c.max_errors, c.hop_limit),
        (2, 7, 30)
    );
    assert_eq!(c.server_timeout, secs(600));
    assert_eq!(c.client_timeout, secs(120));
    assert_eq!(c.connect_timeout, secs(15));
    assert_eq!(c.user.as_deref(), Some("nobody"));
    assert_eq!(c.pid_file, Path::new("/run/tern.pid"));
    assert_eq!(c.log_file.as_deref(), Some(Path::new("/var/log/tern.log")));
    assert_eq!(c.log_level, log::LevelFilter::Debug);
}

/// Issue 14: the sender rewriting keys.
#[test]
fn sender_rewriting_keys() {
    let c = parse("hostname = Router.Lan\n");
    assert_eq!(c.qualify_domain, "router.lan");
    assert_eq!(c.sender_address, None);
    assert_eq!(c.sender_rewrite, None);
    let c = parse(
        "qualify_domain = Home.Example.\nhostname = router.lan\n\
         sender_address = me@Example.com\nsender_rewrite = /etc/tern/senders\n",
    );
    assert_eq!(c.qualify_domain, "home.example");
    assert_eq!(
        c.sender_address,
        Some(crate::smtp::address::Address::parse_mailbox("me@example.com").unwrap())
    );
    assert_eq!(c.sender_rewrite, Some(PathBuf::from("/etc/tern/senders")));
    let e = errors("sender_address = root\nqualify_domain = a..b\nqualify_domain =\n");
    assert_eq!(e.len(), 3, "{e:?}");
    assert_eq!(e[0].line, 1);
    assert!(
        e[0].message.contains("sender_address: bad address"),
        "{e:?}"
    );
    assert!(e[1].message.contains("qualify_domain: bad domain"), "{e:?}");
}

#[test]
fn hostname_sets_default_local_domains_unless_listed() {
    let c = parse("hostname = Router.Lan\n");
    assert_eq!(c.local_domains, vec!["localhost", "router.lan"]);
    let c = parse("local_domains = a.example\nhostname = router.lan\n");
    assert_eq!(c.local_domains, vec!["a.example"]);
    let c = parse("local_domains =\n");
    assert!(c.local_domains.is_empty());
    assert!(!c.is_local_domain("localhost"));
}

#[test]
fn empty_values_mean_empty_lists_and_unset_options() {
    let c = parse(
            "listen =\nrelay_networks = ,\nsmarthost =\ndns_servers =\n\
             smarthost_user =\nsmarthost_password_file =\ntls_cert =\ntls_key =\nuser =\nlog_file =\ndns_timeout =\n",
        );
    assert!(c.listen.is_empty() && c.relay_networks.is_empty());
    assert!(c.smarthost.is_empty() && c.dns_servers.is_empty());
    assert!(c.smarthost_user.is_none() && c.tls_cert.is_none() && c.user.is_none());
    assert!(c.log_file.is_none() && c.dns_timeout.is_none());
    assert!(!c.may_relay(ip("127.0.0.1")));
}

// --- syntax ------------------------------------------------------------------

#[test]
fn comments_whitespace_bom_and_crlf() {
    let c = parse(
        "\u{feff}  hostname\t=  a.example   # the name\r\n#listen = 1.2.3.4:25\r\n\
             max_recipients=7#no space\r\nuser = a=b\n",
    );
    assert_eq!(c.hostname, "a.example");
    assert_eq!(c.max_recipients, 7);
    assert_eq!(c.listen, Config::default().listen);
    assert_eq!(c.user.as_deref(), Some("a=b"));
}

#[test]
fn booleans_and_keywords_ignore_case() {
    for (v, want) in [
        ("yes", true),
        ("No", false),
        ("TRUE", true),
        ("false", false),
        ("on", true),
        ("Off", false),
        ("1", true),
        ("0", false),
    ] {
        assert_eq!(boolean(v), Ok(want), "{v}");
    }
    assert!(boolean("maybe").is_err());
    assert!(boolean("").is_err());
    assert_eq!(
        parse("log_level = WARN\n").log_level,
        log::LevelFilter::Warn
    );
    assert_eq!(parse("log_level = off\n").log_level, log::LevelFilter::Off);
    let e = errors("local_delivery = maildirs\n");
    assert_eq!(
        e[0].to_string(),
        "t.conf:1: local_delivery: expected maildir, mbox, lmtp, got \"maildirs\""
    );
}

#[test]
fn sizes() {
    assert_eq!(parse_size("512"), Ok(512));
    assert_eq!(parse_size("0"), Ok(0));
    assert_eq!(parse_size("2K"), Ok(2048));
    assert_eq!(parse_size("2k"), Ok(2048));
    assert_eq!(parse_size("10M"), Ok(10 << 20));
    assert_eq!(parse_size("3 G"), Ok(3 << 30));
    assert_eq!(parse_size("1g"), Ok(1 << 30));
    for bad in [
        "",
        "K",
        "1T",
        "1KB",
        "-1",
        "+1",
        "1.5M",
        " 1",
        "1e3",
        "99999999999999999999",
    ] {
        assert!(parse_size(bad).is_err(), "{bad:?}");
    }
    // Overflow of the multiplication is an error, not a wrap.
    assert!(parse_size("18014398509481984K").is_err());
    assert!(errors("max_message_size = 0\n")[0]
        .message
        .contains("max_message_size"));
}

#[test]
fn durations() {
    assert_eq!(parse_duration("30"), Ok(secs(30)));
    assert_eq!(parse_duration("30s"), Ok(secs(30)));
    assert_eq!(parse_duration("5m"), Ok(secs(300)));
    assert_eq!(parse_duration("5M"), Ok(secs(300)));
    assert_eq!(parse_duration("2h"), Ok(secs(7200)));
    assert_eq!(parse_duration("5d"), Ok(secs(432_000)));
    assert_eq!(parse_duration("3650d"), Ok(MAX_DURATION));
    for bad in [
        "",
        "s",
        "1w",
        "1h30m",
        "1.5h",
        "-5s",
        "3651d",
        "99999999999999999999",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?}");
    }
    for key in [
        "server_timeout",
        "client_timeout",
        "connect_timeout",
        "max_queue_time",
        "dns_timeout",
    ] {
        let e = errors(&format!("{key} = 0s\n"));
        assert_eq!(e.len(), 1, "{key}");
        assert!(e[0].message.starts_with(key), "{:?}", e[0]);
    }
}

#[test]
fn delay_warning_time_is_off_by_default_and_0_turns_it_off() {
    assert_eq!(parse("").delay_warning_time, None);
    assert_eq!(parse("delay_warning_time = 0").delay_warning_time, None);
    assert_eq!(
        parse("delay_warning_time = 4h").delay_warning_time,
        Some(secs(4 * 3600))
    );
    assert_eq!(errors("delay_warning_time = soon\n").len(), 1);
}

#[test]
fn retry_schedule_must_be_non_empty_and_positive() {
    assert_eq!(parse("retry_schedule = 1s").retry_schedule, vec![secs(1)]);
    assert_eq!(
        parse("retry_schedule = 1s, 2s,").retry_schedule,
        vec![secs(1), secs(2)]
    );
    for bad in [
        "retry_schedule =",
        "retry_schedule = ,",
        "retry_schedule = 5m, 0, 1h",
        "retry_schedule = 5m 10m",
    ] {
        let e = errors(bad);
        assert_eq!((e.len(), e[0].line), (1, 1), "{bad}");
    }
}

#[test]
fn counts_and_ports() {
    for key in [
        "max_recipients",
        "max_connections",
        "max_connections_per_ip",
        "max_outbound",
        "max_outbound_per_host",
        "max_errors",
        "hop_limit",
    ] {
        assert_eq!(errors(&format!("{key} = 0")).len(), 1, "{key}");
        assert_eq!(errors(&format!("{key} = -1")).len(), 1, "{key}");
        assert_eq!(errors(&format!("{key} = ten")).len(), 1, "{key}");
    }
    assert_eq!(parse("mx_port = 65535").mx_port, 65535);
    for bad in [
        "mx_port = 0",
        "mx_port = 65536",
        "mx_port =",
        "listen = 127.0.0.1:0",
        "smarthost = a.example:0",
        "dns_servers = 127.0.0.1:0",
    ] {
        assert_eq!(errors(bad).len(), 1, "{bad}");
    }
}

// --- addresses -----------------------------------------------------------------

#[test]
fn listen_addresses() {
    let c = parse("listen = [::1]:25, [2001:db8::5]:2525, 127.0.0.1:2525\n");
    assert_eq!(c.listen.len(), 3);
    assert!(c.listen[0].is_ipv6() && c.listen[0].port() == 25);
    assert_eq!(c.listen[1], "[2001:db8::5]:2525".parse().unwrap());
    for bad in [
        "listen = ::1:25",
        "listen = localhost:25",
        "listen = 127.0.0.1",
        "listen = [::1]",
        "listen = 127.0.0.1:25x",
    ] {
        assert_eq!(errors(bad).len(), 1, "{bad}");
    }
    assert!(errors("listen = 127.0.0.1")[0]
        .message
        .contains("missing port"));
}

#[test]
fn listener_addresses_must_be_distinct() {
    let e = errors("listen = 127.0.0.1:25\nsubmission_listen = 127.0.0.1:587, 127.0.0.1:25\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 2);
    assert!(
        e[0].message.contains("already listed in listen"),
        "{}",
        e[0]
    );
}

#[test]
fn cidrs() {
    let c = |s: &str| Cidr::parse(s).unwrap();
    assert!(c("10.0.0.0/8").contains(ip("10.255.255.255")));
    assert!(!c("10.0.0.0/8").contains(ip("11.0.0.0")));
    assert!(c("0.0.0.0/0").contains(ip("8.8.8.8")));
    assert!(!c("0.0.0.0/0").contains(ip("2001:db8::1")));
    assert!(c("::/0").contains(ip("2001:db8::1")));
    assert!(c("192.0.2.7").contains(ip("192.0.2.7")));
    assert!(!c("192.0.2.7").contains(ip("192.0.2.8")));
    assert!(c("::1").contains(ip("::1")));
    assert!(!c("::1").contains(ip("127.0.0.1")));
    assert!(c("2001:db8::/32").contains(ip("2001:db8:1::5")));
    assert!(!c("2001:db8::/32").contains(ip("2001:db9::")));
    // IPv4-mapped IPv6 clients match IPv4 networks ...
    assert!(c("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
    assert!(!c("127.0.0.0/8").contains(ip("::ffff:128.0.0.1")));
    // ... and IPv4-mapped networks match IPv4 clients.
    assert!(c("::ffff:10.0.0.0/104").contains(ip("10.1.2.3")));
    assert_eq!(c("::ffff:10.0.0.0/104"), c("10.0.0.0/8"));
    // Host bits are cleared.
    assert_eq!(c("10.1.2.3/8"), c("10.0.0.0/8"));
    assert_eq!(c("10.1.2.3/8").to_string(), "10.0.0.0/8");
    assert_eq!(c("fd00::1/8").to_string(), "fd00::/8");
    for bad in [
        "10.0.0.0/33",
        "::1/129",
        "10.0.0.0/",
        "10.0.0.0/-1",
        "10.0.0.0/+8",
        "10.0.0/8",
        "example.net/8",
        "",
        "/8",
        "10.0.0.0/8/8",
    ] {
        assert!(Cidr::parse(bad).is_err(), "{bad:?}");
    }
    let e = errors("relay_networks = 10.0.0.0/33\n");
    assert!(e[0].message.contains("10.0.0.0/33"), "{}", e[0]);
}

#[test]
fn host_ports() {
    let hp = |s: &str| HostPort::parse(s, 25);
    assert_eq!(hp("mail.example.net").unwrap().port, 25);
    assert_eq!(hp("mail.example.net:465").unwrap().port, 465);
    assert_eq!(hp("[::1]").unwrap().host, "::1");
    assert_eq!(hp("1.2.3.4:26").unwrap().to_string(), "1.2.3.4:26");
    for bad in [
        "",
        ":25",
        "a.example:",
        "a.example:x",
        "[::1",
        "[::1]x",
        "[a.example]:25",
        "bad host:25",
        "-a.example",
        "a..example",
        "a.example:25:25",
    ] {
        assert!(hp(bad).is_err(), "{bad:?}");
    }
    assert!(errors("dns_servers = ns.example.net")[0]
        .message
        .contains("not names"));
}

// --- errors ------------------------------------------------------------------

#[test]
fn unknown_key() {
    let e = errors("hostname = a.example\nlisten_x = 1\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].to_string(), "t.conf:2: unknown key \"listen_x\"");
    // Keys are case-sensitive.
    assert_eq!(errors("Hostname = a.example")[0].line, 1);
}

#[test]
fn duplicate_key() {
    let e = errors("max_recipients = 5\n\nmax_recipients = 6\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 3);
    assert!(e[0].message.contains("first set on line 1"), "{}", e[0]);
}

#[test]
fn missing_equals_and_missing_key() {
    let e = errors("no equals sign here\n= 5\n");
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].line, 1);
    assert!(e[0].message.contains("key = value"));
    assert_eq!(e[1].line, 2);
}

#[test]
fn all_errors_reported_in_line_order() {
    let e = errors(
            "max_recipients = lots\nno equals sign\nspool_sync = maybe\nmax_recipients = 5\n\
             relay_networks = 10.0.0.0/33\nmax_outbound = 0\nretry_schedule =\nhostname = ok.example\n\
             tls_cert = /c.pem\nbogus = 1\n",
        );
    let lines: Vec<usize> = e.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![1, 2, 3, 4, 5, 6, 7, 9, 10]);
    assert!(e[0].message.starts_with("max_recipients: "));
    assert!(e[3].message.contains("duplicate"));
    assert!(e[7].message.contains("tls_key"));
    assert_eq!(e[8].to_string(), "t.conf:10: unknown key \"bogus\"");
}

#[test]
fn cross_key_validation() {
    let e = errors("tls_cert = /x.pem\n");
    assert_eq!((e.len(), e[0].line), (1, 1));
    let e = errors("hostname = a.example\ntls_key = /k.pem\n");
    assert_eq!((e.len(), e[0].line), (1, 2));
    let e = errors("smtps_listen = 127.0.0.1:465\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].message.contains("smtps_listen"));
    parse("smtps_listen = 127.0.0.1:465\ntls_cert = /c\ntls_key = /k\n");
    let e = errors("smarthost_user = me\n");
    assert_eq!((e.len(), e[0].line), (1, 1));
    let e = errors("\nsmarthost_password_file = /pw\n");
    assert_eq!((e.len(), e[0].line), (1, 2));
}

#[test]
fn hostname_validation() {
    for bad in [
        "hostname =",
        "hostname = my host",
        "hostname = a..b",
        "hostname = -a.example",
        "hostname = host_name",
        "hostname = a.example.",
    ] {
        let e = errors(bad);
        assert_eq!((e.len(), e[0].line), (1, 1), "{bad}");
    }
    assert_eq!(parse("hostname = router").hostname, "router");
}

#[test]
fn local_domains_validation() {
    let e = errors("local_domains = ok.example, bad domain\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].message.contains("bad domain"));
}

#[test]
fn load_reports_unreadable_files_and_errors_with_the_path() {
    let e = Config::load(Path::new("/nonexistent/tern.conf")).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 0);
    assert!(e[0]
        .to_string()
        .starts_with("/nonexistent/tern.conf: cannot read"));
    let dir = std::env::temp_dir().join(format!("tern-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.conf");
    std::fs::write(
        &path,
        "hostname = ok.test\nbogus_key = 1\nmax_recipients = lots\n",
    )
    .unwrap();
    let e = Config::load(&path).unwrap_err();
    let shown: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(shown.len(), 2);
    assert!(shown[0].starts_with(&format!("{}:2: ", path.display())));
    assert!(shown[1].starts_with(&format!("{}:3: ", path.display())));
    std::fs::write(&path, b"hostname = \xff\n").unwrap();
    assert!(Config::load(&path).unwrap_err()[0]
        .message
        .contains("UTF-8"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn make_paths_absolute_resolves_relative_paths() {
    let mut c =
        parse("spool_dir = run/spool\nlog_file = run/log\ntls_ca_file = ca.pem\naliases =\n");
    c.make_paths_absolute();
    assert!(c.spool_dir.is_absolute() && c.spool_dir.ends_with("run/spool"));
    assert!(c.log_file.as_deref().is_some_and(Path::is_absolute));
    assert!(c.tls_ca_file.as_deref().is_some_and(Path::is_absolute));
    assert_eq!(c.aliases, PathBuf::new());
    assert_eq!(c.pid_file, Path::new("/var/run/tern.pid"));
}

// --- the shipped example -----------------------------------------------------

/// Checks a documented example: it parses as is, every key is shown as
/// a commented-out `# key = value` line, and uncommenting every such line
/// gives the defaults (apart from the example host name).
pub(crate) fn check_example(text: &str) {
    let as_is = Config::parse(text, "tern.conf");
    assert!(as_is.is_ok(), "{as_is:?}");
    let mut shown = Vec::new();
    let mut uncommented = String::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# ") else {
            continue;
        };
        let Some((key, _)) = rest.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if KEYS.contains(&key) {
            shown.push(key);
            uncommented.push_str(rest);
            uncommented.push('\n');
        }
    }
    for key in KEYS {
        assert!(shown.contains(key), "{key} is not documented");
    }
    assert_eq!(shown.len(), KEYS.len(), "a key is shown twice");
    let all = match Config::parse(&uncommented, "uncommented") {
        Ok(c) => c,
        Err(e) => panic!("{e:?}"),
    };
    let want = Config {
        hostname: all.hostname.clone(),
        // Its default is the host name: the example shows that value.
        helo_name: all.helo_name.clone().filter(|h| *h == all.hostname),
        local_domains: default_local_domains(&all.hostname),
        qualify_domain: all.hostname.to_ascii_lowercase(),
        ..Config::default()
    };
    assert_eq!(all, want);
}

#[test]
fn shipped_example_config() {
    // Only inside the tern crate, where etc/ sits next to Cargo.toml.
    if env!("CARGO_PKG_NAME") != "tern" {
        return;
    }
    let dir = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{dir}/etc/tern.conf")).unwrap();
    check_example(&text);
    let dev = std::fs::read_to_string(format!("{dir}/etc/tern.dev.conf")).unwrap();
    assert!(Config::parse(&dev, "tern.dev.conf").is_ok());
}

#[test]
fn helo_name_defaults_to_hostname_and_refuses_localhost() {
    let cfg = Config::parse("hostname = mx.example\n", "t").expect("config");
    assert_eq!(cfg.helo_name(), "mx.example");
    let cfg =
        Config::parse("hostname = router.lan\nhelo_name = Out.Example.NET\n", "t").expect("config");
    assert_eq!(cfg.helo_name(), "Out.Example.NET");
    for bad in [
        "localhost",
        "LOCALHOST.",
        "localhost.localdomain",
        "not a name",
    ] {
        let errors = Config::parse(
            &format!("hostname = mx.example\n\nhelo_name = {bad}\n"),
            "t",
        )
        .expect_err(bad);
        assert!(errors.iter().any(|e| e.line == 3), "{bad}: {errors:?}");
    }
}

#[test]
fn smarthost_oauth_keys() {
    use crate::routes::AuthMechanism;
    let c = parse(
        "smarthost = smtp.gmail.com:587\nsmarthost_user = me@gmail.com\n\
         smarthost_auth = xoauth2\nsmarthost_oauth_token_command = /usr/bin/tok --user me\n",
    );
    assert_eq!(c.smarthost_auth, Some(AuthMechanism::XOAuth2));
    assert_eq!(
        c.smarthost_oauth_token_command.as_deref(),
        Some("/usr/bin/tok --user me")
    );
    let relay = crate::routes::Relay::smarthost(&c).unwrap();
    assert_eq!(
        relay.oauth_source(),
        Some(&crate::oauth::TokenSpec::Command(
            "/usr/bin/tok --user me".into()
        ))
    );
    assert_eq!(
        parse("smarthost_auth = LOGIN\n").smarthost_auth,
        Some(AuthMechanism::Login)
    );
    assert_eq!(parse("smarthost_auth =\n").smarthost_auth, None);
    let e = errors("smarthost_user = me\nsmarthost_auth = oauthbearer\n");
    assert!(
        e[0].message.contains("needs smarthost_oauth_token_command"),
        "{e:?}"
    );
    let e = errors("smarthost_oauth_token_command = /t\n");
    assert!(e[0].message.contains("needs smarthost_auth"), "{e:?}");
    let e = errors("smarthost_auth = xoauth2\nsmarthost_oauth_token_command = /t\n");
    assert!(e[0].message.contains("needs smarthost_user"), "{e:?}");
    let e = errors(
        "smarthost_user = me\nsmarthost_password_file = /p\nsmarthost_auth = xoauth2\n\
         smarthost_oauth_token_command = /t\n",
    );
    assert!(e[0].message.contains("not used with"), "{e:?}");
    let e = errors("smarthost_auth = cram-md5\n");
    assert_eq!(e[0].line, 1);
}

#[test]
fn smarthost_oauth_refresh_grant_keys() {
    use crate::oauth::{RefreshGrant, TokenSpec};
    let base = "smarthost = smtp.office365.com:587\nsmarthost_user = me@example.com\n\
                smarthost_auth = xoauth2\n";
    let c = parse(&format!(
        "{base}smarthost_oauth_token_url = https://login.microsoftonline.com/common/oauth2/v2.0/token\n\
         smarthost_oauth_client_id = 1234-abcd\n\
         smarthost_oauth_refresh_token_file = /etc/tern/oauth-refresh\n"
    ));
    let relay = crate::routes::Relay::smarthost(&c).unwrap();
    let Some(TokenSpec::Refresh(g)) = relay.oauth_source() else {
        panic!("no grant: {relay:?}")
    };
    assert_eq!(
        g,
        &RefreshGrant {
            token_url: crate::http::Url::parse(
                "https://login.microsoftonline.com/common/oauth2/v2.0/token"
            )
            .unwrap(),
            client_id: "1234-abcd".into(),
            client_secret_file: None,
            refresh_token_file: PathBuf::from("/etc/tern/oauth-refresh"),
        }
    );
    let c = parse(&format!(
        "{base}smarthost_oauth_token_url = https://127.0.0.1:8443/token\n\
         smarthost_oauth_client_id = id\nsmarthost_oauth_client_secret_file = /s\n\
         smarthost_oauth_refresh_token_file = /r\n"
    ));
    assert_eq!(
        c.smarthost_oauth_client_secret_file.as_deref(),
        Some(Path::new("/s"))
    );
    // Both sources: refused, naming the keys.
    let e = errors(&format!(
        "{base}smarthost_oauth_token_command = /t\n\
         smarthost_oauth_token_url = https://x.example/t\nsmarthost_oauth_client_id = id\n\
         smarthost_oauth_refresh_token_file = /r\n"
    ));
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].line, 4);
    assert!(
        e[0].message
            .contains("smarthost_oauth_token_command and the refresh-token grant")
            && e[0].message.contains("smarthost_oauth_token_url")
            && e[0].message.contains("mutually exclusive"),
        "{e:?}"
    );
    // Incomplete: each missing key named on its own.
    let e = errors(&format!(
        "{base}smarthost_oauth_token_url = https://x.example/t\n"
    ));
    let messages: Vec<&str> = e.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].contains("needs smarthost_oauth_client_id"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("needs smarthost_oauth_refresh_token_file"),
        "{messages:?}"
    );
    let e = errors(&format!("{base}smarthost_oauth_client_secret_file = /s\n"));
    assert_eq!(e.len(), 3, "{e:?}");
    // HTTPS only.
    let e = errors("smarthost_oauth_token_url = http://127.0.0.1/token\n");
    assert!(e[0].message.contains("https://"), "{e:?}");
    // Without OAuth AUTH.
    let e = errors(
        "smarthost_oauth_token_url = https://x.example/t\nsmarthost_oauth_client_id = id\n\
         smarthost_oauth_refresh_token_file = /r\n",
    );
    assert!(
        e[0].message.contains("needs smarthost_auth = xoauth2"),
        "{e:?}"
    );
    // Neither source.
    let e = errors(base);
    assert!(
        e[0].message
            .contains("needs smarthost_oauth_token_command or the refresh-token grant"),
        "{e:?}"
    );
}

// --- local_delivery = lmtp ---------------------------------------------------

#[test]
fn lmtp_delivery_takes_its_target() {
    let c = parse("local_delivery = lmtp\nlmtp_target = unix:/run/dovecot/lmtp\n");
    assert_eq!(c.local_delivery, LocalDelivery::Lmtp);
    assert_eq!(
        c.lmtp_target,
        Some(LmtpTarget::Unix("/run/dovecot/lmtp".into()))
    );
}

#[test]
fn lmtp_without_target_and_target_without_lmtp_are_errors() {
    let e = errors("hostname = h.test\nlocal_delivery = lmtp\n");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 2);
    assert!(e[0].message.contains("needs lmtp_target"), "{e:?}");
    let e = errors("lmtp_target = 127.0.0.1:24\n");
    assert_eq!(e[0].line, 1);
    assert!(e[0]
        .message
        .contains("only used with local_delivery = lmtp"));
    let e = errors("local_delivery = lmtp\nlmtp_target = unix:relative\n");
    assert!(
        e.iter()
            .any(|e| e.line == 2 && e.message.starts_with("lmtp_target: ")),
        "{e:?}"
    );
}

#[cfg(feature = "idn")]
#[test]
fn local_domains_in_u_labels_are_stored_as_a_labels() {
    let c = parse("local_domains = Bücher.example, xn--e1afmkfd.xn--80akhbyknj4f\n");
    assert_eq!(
        c.local_domains,
        vec!["xn--bcher-kva.example", "xn--e1afmkfd.xn--80akhbyknj4f"]
    );
    assert!(c.is_local_domain("xn--bcher-kva.example"));
}
