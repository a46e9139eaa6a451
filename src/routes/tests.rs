use super::*;

fn table(text: &str) -> RouteTable {
    let (t, errors) = RouteTable::parse(text);
    assert!(errors.is_empty(), "{errors:?}");
    t
}

/// The line number of the route chosen, 0 for the default.
fn chosen(t: &RouteTable, sender: &str, domain: &str) -> usize {
    match t.route_for(sender, domain) {
        RouteChoice::Route(r) => r.line,
        RouteChoice::Default => 0,
    }
}

#[test]
fn parses_every_target_and_key() {
    let t = table(
        "# comment\n\
         \n\
         @example.com smtp:mail.example.com:587 tls=starttls user=u password_file=/etc/pw auth=login # trailing\n\
         .corp.example smtp:10.0.0.5 tls=none\n\
         from:@work.example smtp:[2001:db8::1]:465 tls=tls user=me@work.example password_file=/p auth=plain\n\
         from:Cron@Router.lan mx\n\
         @router.lan local\n\
         @alerts.example webhook:https://ntfy.example/topic format=json\n\
         @o.example smtp:smtp.office365.com:587 user=me@o.example auth=xoauth2 oauth_token_command=/bin/tok\n\
         * smtp:smtp.gmail.com:465 tls=tls\n",
    );
    let r = t.routes();
    assert_eq!(r.len(), 8);
    assert_eq!(r[0].line, 3);
    assert_eq!(r[0].matcher, Match::Domain("example.com".into()));
    assert_eq!(
        r[0].target,
        Target::Smtp(Relay {
            hosts: vec![HostPort {
                host: "mail.example.com".into(),
                port: 587
            }],
            tls: SmarthostTls::StartTls,
            user: Some("u".into()),
            password_file: Some("/etc/pw".into()),
            auth: Some(AuthMechanism::Login),
            oauth: None,
        })
    );
    assert_eq!(r[1].matcher, Match::Subdomains("corp.example".into()));
    let Target::Smtp(relay) = &r[1].target else {
        panic!("{:?}", r[1].target)
    };
    assert_eq!(relay.hosts[0].port, 25);
    assert_eq!(relay.tls, SmarthostTls::None);
    assert_eq!(relay.user, None);
    assert_eq!(r[2].matcher, Match::SenderDomain("work.example".into()));
    let Target::Smtp(relay) = &r[2].target else {
        panic!()
    };
    assert_eq!(relay.hosts[0].host, "2001:db8::1");
    assert_eq!(relay.tls, SmarthostTls::Tls);
    assert_eq!(relay.auth, Some(AuthMechanism::Plain));
    assert!(
        matches!(&r[3].matcher, Match::Sender(a) if a.to_string() == "Cron@router.lan"
        || a.to_string().eq_ignore_ascii_case("cron@router.lan"))
    );
    assert_eq!(r[3].target, Target::Mx);
    assert_eq!(r[4].target, Target::Local);
    assert_eq!(
        r[5].target,
        Target::Webhook {
            url: crate::http::Url::parse("https://ntfy.example/topic").unwrap(),
            format: WebhookFormat::Json
        }
    );
    let Target::Smtp(relay) = &r[6].target else {
        panic!()
    };
    assert_eq!(relay.auth, Some(AuthMechanism::XOAuth2));
    assert_eq!(
        relay.oauth,
        Some(crate::oauth::TokenSpec::Command("/bin/tok".into()))
    );
    assert_eq!(r[7].matcher, Match::Any);
}

#[test]
fn bad_lines_are_reported_with_their_number() {
    let (t, errors) = RouteTable::parse(
        "@ok.example mx\n\
         example.com mx\n\
         @bad..example mx\n\
         @x.example\n\
         @x.example ftp:host\n\
         @x.example smtp:host:0\n\
         @x.example smtp:host:25 tls=maybe\n\
         @x.example smtp:host:25 color=red\n\
         @x.example mx tls=none\n\
         @x.example smtp:host user=u\n\
         @x.example smtp:host password_file=/p\n\
         @x.example smtp:host user=u password_file=relative\n\
         @x.example smtp:host auth=cram-md5 user=u password_file=/p\n\
         @x.example smtp:host tls=tls tls=none\n\
         @x.example webhook:ftp://x format=json\n\
         @x.example webhook:https://x/y format=xml\n\
         from:nobody mx\n\
         @x.example smtp:host tls\n",
    );
    assert_eq!(t.routes().len(), 1);
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, (2..=18).collect::<Vec<_>>());
    assert!(errors[0].message.contains("bad match"), "{}", errors[0]);
    assert!(errors[5].message.contains("tls=maybe"), "{}", errors[5]);
    assert!(
        errors[6].message.contains("unknown key color"),
        "{}",
        errors[6]
    );
    assert!(
        errors[8].message.contains("needs password_file"),
        "{}",
        errors[8]
    );
    assert!(errors[10].message.contains("absolute"), "{}", errors[10]);
    assert_eq!(
        errors[0].to_string(),
        format!("line 2: {}", errors[0].message)
    );
}

#[test]
fn oauth_routes_are_supported_and_checked() {
    let t = table(
        "@a.example smtp:h:587 user=u auth=xoauth2 oauth_token_command=/bin/tok\n\
         @b.example smtp:h:587 user=u auth=oauthbearer oauth_token_command=/bin/t\n\
         @d.example webhook:https://ntfy.sh/x\n\
         @e.example smtp:h:587 user=u password_file=/p auth=plain\n",
    );
    let why: Vec<Option<&str>> = t.routes().iter().map(|r| r.target.unsupported()).collect();
    assert_eq!(why, vec![None, None, None, None]);
    let Target::Smtp(r) = &t.routes()[0].target else {
        panic!("not smtp")
    };
    assert_eq!(
        r.oauth_source(),
        Some(&crate::oauth::TokenSpec::Command("/bin/tok".into()))
    );
    let c = r.oauth_credentials("tok").unwrap();
    assert_eq!((c.user.as_str(), c.password.as_str()), ("u", "tok"));
    let Target::Smtp(plain) = &t.routes()[3].target else {
        panic!("not smtp")
    };
    assert_eq!(plain.oauth_source(), None);
    let (_, errors) = RouteTable::parse(
        "@a.example smtp:h:587 user=u auth=xoauth2\n\
         @c.example smtp:h:587 user=u password_file=/p oauth_token_command=/bin/t\n\
         @c.example smtp:h:587 user=u password_file=/p auth=xoauth2 oauth_token_command=/bin/t\n",
    );
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        vec![
            "auth=xoauth2|oauthbearer needs oauth_token_command= or oauth_token_url=, \
             oauth_client_id= and oauth_refresh_token_file=",
            "oauth_token_command= needs auth=xoauth2 or auth=oauthbearer",
            "password_file= is not used with auth=xoauth2|oauthbearer",
        ]
    );
}

#[test]
fn oauth_refresh_grant_routes() {
    use crate::oauth::{RefreshGrant, TokenSpec};
    let t = table(
        "@a.example smtp:h:587 user=u auth=xoauth2 oauth_token_url=https://login.example/t \
         oauth_client_id=cid oauth_refresh_token_file=/etc/tern/rt\n\
         @b.example smtp:h:587 user=u auth=oauthbearer oauth_token_url=https://login.example:8443/t \
         oauth_client_id=cid oauth_client_secret_file=/etc/tern/cs oauth_refresh_token_file=/etc/tern/rt\n",
    );
    let Target::Smtp(r) = &t.routes()[0].target else {
        panic!("not smtp")
    };
    assert_eq!(
        r.oauth_source(),
        Some(&TokenSpec::Refresh(RefreshGrant {
            token_url: crate::http::Url::parse("https://login.example/t").unwrap(),
            client_id: "cid".into(),
            client_secret_file: None,
            refresh_token_file: "/etc/tern/rt".into(),
        }))
    );
    let Target::Smtp(r) = &t.routes()[1].target else {
        panic!("not smtp")
    };
    let Some(TokenSpec::Refresh(g)) = r.oauth_source() else {
        panic!("no grant")
    };
    assert_eq!(g.token_url.port, 8443);
    assert_eq!(
        g.client_secret_file.as_deref(),
        Some(Path::new("/etc/tern/cs"))
    );
    let (_, errors) = RouteTable::parse(
        "@a.example smtp:h user=u auth=xoauth2 oauth_token_command=/t oauth_token_url=https://x/t\n\
         @a.example smtp:h user=u auth=xoauth2 oauth_client_id=c oauth_refresh_token_file=/rt\n\
         @a.example smtp:h user=u auth=xoauth2 oauth_token_url=https://x/t oauth_refresh_token_file=/rt\n\
         @a.example smtp:h user=u auth=xoauth2 oauth_token_url=https://x/t oauth_client_id=c\n\
         @a.example smtp:h user=u auth=xoauth2 oauth_token_url=http://x/t oauth_client_id=c oauth_refresh_token_file=/rt\n\
         @a.example smtp:h user=u auth=xoauth2 oauth_token_url=https://x/t oauth_client_id=c oauth_refresh_token_file=rt\n\
         @a.example smtp:h oauth_token_url=https://x/t oauth_client_id=c oauth_refresh_token_file=/rt\n",
    );
    let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(
        messages,
        vec![
            "oauth_token_command= and oauth_token_url=/oauth_client_id=/oauth_client_secret_file=/\
             oauth_refresh_token_file= are mutually exclusive: set one",
            "the refresh-token grant needs oauth_token_url=",
            "the refresh-token grant needs oauth_client_id=",
            "the refresh-token grant needs oauth_refresh_token_file=",
            "oauth_token_url=\"http://x/t\": URL must start with https://",
            "oauth_refresh_token_file=rt: must be an absolute path",
            "oauth_token_url= needs auth=xoauth2 or auth=oauthbearer",
        ]
    );
}

#[test]
fn first_match_wins() {
    let t = table(
        "@example.com mx\n\
         * local\n\
         @other.example mx\n",
    );
    assert_eq!(chosen(&t, "", "example.com"), 1);
    assert_eq!(chosen(&t, "", "other.example"), 2);
    let t = table("@a.example mx\n");
    assert_eq!(chosen(&t, "x@y.example", "b.example"), 0);
}

#[test]
fn domain_and_subdomains_differ() {
    let t = table(
        "@example.com mx\n\
         .example.com local\n",
    );
    assert_eq!(chosen(&t, "", "example.com"), 1);
    assert_eq!(chosen(&t, "", "EXAMPLE.com."), 1);
    assert_eq!(chosen(&t, "", "mail.example.com"), 2);
    assert_eq!(chosen(&t, "", "a.b.Example.COM"), 2);
    assert_eq!(chosen(&t, "", "notexample.com"), 0);
    assert_eq!(chosen(&t, "", "example.com.evil"), 0);
    let t = table(".example.com mx\n");
    assert_eq!(chosen(&t, "", "example.com"), 0);
}

#[test]
fn from_matches_the_envelope_sender() {
    let t = table(
        "from:boss@work.example smtp:boss.example:25\n\
         from:@work.example smtp:work.example:25\n\
         @work.example mx\n",
    );
    assert_eq!(chosen(&t, "boss@work.example", "gmail.com"), 1);
    assert_eq!(chosen(&t, "BOSS@Work.Example", "gmail.com"), 1);
    assert_eq!(chosen(&t, "staff@work.example", "gmail.com"), 2);
    assert_eq!(chosen(&t, "me@home.example", "gmail.com"), 0);
    // The null sender matches no from: line; the recipient line still applies.
    assert_eq!(chosen(&t, "", "work.example"), 3);
    assert_eq!(chosen(&t, "", "gmail.com"), 0);
    // A recipient in work.example does not make the sender match.
    assert_eq!(chosen(&t, "me@home.example", "work.example"), 3);
}

#[test]
fn local_routes() {
    let t = table(
        "from:@noisy.example mx\n\
         @router.lan local\n",
    );
    assert!(t.is_local("root@router.lan", "router.lan"));
    assert!(!t.is_local("x@noisy.example", "router.lan"));
    assert!(!t.is_local("", "example.com"));
}

#[test]
fn relays_differ_by_credentials() {
    let t = table(
        "@a.example smtp:h:587 user=a password_file=/a\n\
         @b.example smtp:h:587 user=b password_file=/b\n\
         @c.example smtp:h:587 user=a password_file=/a\n",
    );
    let relay = |i: usize| match &t.routes()[i].target {
        Target::Smtp(r) => r.clone(),
        other => panic!("{other:?}"),
    };
    assert_ne!(relay(0), relay(1));
    assert_eq!(relay(0), relay(2));
}

#[test]
fn credentials_come_from_the_password_file() {
    let dir = crate::test_dir::TempDir::new("routes-credentials");
    let pw = dir.0.join("pw");
    std::fs::write(&pw, "s3cret\nignored\n").unwrap();
    let relay = Relay {
        hosts: vec![],
        tls: SmarthostTls::StartTls,
        user: Some("me".into()),
        password_file: Some(pw.clone()),
        auth: None,
        oauth: None,
    };
    let c = relay.credentials().unwrap().unwrap();
    assert_eq!((c.user.as_str(), c.password.as_str()), ("me", "s3cret"));
    let missing = Relay {
        password_file: Some(dir.0.join("nope")),
        ..relay.clone()
    };
    assert!(missing.credentials().unwrap_err().contains("nope"));
    let none = Relay {
        user: None,
        password_file: None,
        ..relay
    };
    assert_eq!(none.credentials().unwrap(), None);
}

#[test]
fn load_reports_file_lines_and_unsupported_targets() {
    let dir = crate::test_dir::TempDir::new("routes-load");
    let path = dir.0.join("routes");
    std::fs::write(
        &path,
        "@a.example mx\n@b.example bogus\n@c.example webhook:http://x.example/t\n",
    )
    .unwrap();
    let cfg = Config {
        routes: Some(path.clone()),
        ..Default::default()
    };
    let (t, problems) = RouteTable::load(&cfg);
    assert_eq!(t.routes().len(), 1);
    let p = path.display();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with(&format!("{p}:2: bad target")),
        "{problems:?}"
    );
    assert_eq!(
        problems[1],
        format!("{p}:3: bad webhook URL \"http://x.example/t\": URL must start with https://")
    );
    // A missing password file is a start-up problem with the line.
    std::fs::write(&path, "* smtp:h:587 user=u password_file=/nonexistent/pw\n").unwrap();
    let problems = startup_problems(&cfg);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with(&format!("{p}:1: password_file /nonexistent/pw")));
}

#[test]
fn oversized_file_is_refused() {
    let dir = crate::test_dir::TempDir::new("routes-big");
    let path = dir.0.join("routes");
    let line = "@a.example mx\n";
    let n = MAX_ROUTES_FILE_BYTES as usize / line.len() + 1;
    std::fs::write(&path, line.repeat(n)).unwrap();
    let cfg = Config {
        routes: Some(path),
        ..Default::default()
    };
    let (t, problems) = RouteTable::load(&cfg);
    assert!(t.is_empty());
    assert_eq!(problems.len(), 1, "{problems:?}");
}

#[test]
fn port_465_in_starttls_mode_is_warned_about() {
    let dir = crate::test_dir::TempDir::new("routes-465");
    let path = dir.0.join("routes");
    std::fs::write(
        &path,
        "@a.example smtp:smtp.a.example:465\n@b.example smtp:smtp.b.example:465 tls=tls\n",
    )
    .unwrap();
    let cfg = Config {
        routes: Some(path.clone()),
        ..Default::default()
    };
    let w = startup_warnings(&cfg);
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with(&format!("{}:1: smtp:smtp.a.example:465", path.display())));
}

#[cfg(feature = "idn")]
#[test]
fn u_label_domains_match_their_a_labels() {
    // Mail is routed by the stored (A-label) domain; a routes file may
    // name the domain either way.
    let t = table("@bücher.example mx\n.пример.испытание local\n");
    assert_eq!(chosen(&t, "", "xn--bcher-kva.example"), 1);
    assert_eq!(chosen(&t, "", "mail.xn--e1afmkfd.xn--80akhbyknj4f"), 2);
}
