"""Routes (issue 14, part 2; SPEC "Router mail", key `routes`): the next
hop per recipient domain and per sender, first match wins; the smarthost
keys stay the default. Recipients of one message with different routes
are delivered separately, each sink getting only its own."""

import signal
import subprocess

import pytest

from harness import TERN_BIN, FakeDns, Sink, wait_for
from test_outbound import send


@pytest.fixture
def sinks():
    made = []

    def make(**kw):
        s = Sink(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def with_routes(tern_factory, text, **overrides):
    """A tern whose routes file holds `text` (not started)."""
    t = tern_factory(**overrides)
    routes = t.dir / "routes"
    routes.write_text(text)
    t.settings["routes"] = str(routes)
    t.write_config()
    t.routes = routes
    return t


def rcpts_of(sink):
    return sorted(r for m in sink.messages for r in m["rcpts"])


def check_config(t):
    r = subprocess.run([TERN_BIN, "-c", str(t.conf), "check-config"], capture_output=True,
                       timeout=30)
    return r.returncode, r.stderr.decode()


def test_recipient_domains_go_to_their_own_relay_in_one_message(tern_factory, sinks):
    a, b, default = sinks(), sinks(), sinks()
    t = with_routes(
        tern_factory,
        f"@a.example smtp:127.0.0.1:{a.port} tls=none\n"
        f".b.example smtp:127.0.0.1:{b.port} tls=none  # subdomains only\n",
        smarthost=f"127.0.0.1:{default.port}", smarthost_tls="none",
    ).start()
    send(t, "me@lan.test", ["x@a.example", "y@mail.b.example", "z@b.example", "w@a.example"])
    wait_for(lambda: a.messages and b.messages and default.messages, what="three deliveries")
    assert rcpts_of(a) == ["w@a.example", "x@a.example"]
    assert len(a.messages) == 1  # one transaction for the route's recipients
    assert rcpts_of(b) == ["y@mail.b.example"]
    # `.b.example` is not b.example itself: no match, the smarthost.
    assert rcpts_of(default) == ["z@b.example"]
    assert all(b"hello world" in m["data"] for s in (a, b, default) for m in s.messages)


def test_sender_routes_choose_the_relay(tern_factory, sinks):
    work, home = sinks(), sinks()
    t = with_routes(
        tern_factory,
        f"from:@work.example smtp:127.0.0.1:{work.port} tls=none\n"
        f"* smtp:127.0.0.1:{home.port} tls=none\n",
    ).start()
    send(t, "boss@work.example", ["x@far.test"])
    send(t, "me@home.example", ["x@far.test"])
    wait_for(lambda: work.messages and home.messages, what="both deliveries")
    assert [m["sender"] for m in work.messages] == ["boss@work.example"]
    assert [m["sender"] for m in home.messages] == ["me@home.example"]


def test_per_route_credentials_reach_their_relay(tern_factory, sinks):
    a = sinks(auth=("alice", "pw-a"))
    b = sinks(auth=("bob", "pw-b"))
    t = tern_factory()
    (t.dir / "pa").write_text("pw-a\n")
    (t.dir / "pb").write_text("pw-b\n")
    t = with_routes(
        lambda **kw: t,
        f"@a.example smtp:127.0.0.1:{a.port} tls=none user=alice password_file={t.dir / 'pa'}\n"
        f"@b.example smtp:127.0.0.1:{b.port} tls=none user=bob password_file={t.dir / 'pb'}\n",
    ).start()
    send(t, "me@lan.test", ["x@a.example", "y@b.example"])
    wait_for(lambda: a.messages and b.messages, what="both deliveries")
    assert [(u, p) for u, p, _ in a.auth_seen] == [("alice", "pw-a")]
    assert [(u, p) for u, p, _ in b.auth_seen] == [("bob", "pw-b")]
    assert [m["auth"] for m in a.messages + b.messages] == ["alice", "bob"]
    assert rcpts_of(a) == ["x@a.example"] and rcpts_of(b) == ["y@b.example"]


def test_two_routes_to_one_host_with_different_users_never_share_a_session(tern_factory, sinks):
    # The sink takes either user: each transaction must come after its own AUTH.
    s = sinks(auth=("alice", "pw-a"))
    seen = []

    def mail(txn, cmd):
        seen.append(txn["auth"])
        return "250 2.1.0 ok"

    s.script["mail"] = mail
    t = tern_factory()
    (t.dir / "pa").write_text("pw-a\n")
    (t.dir / "pb").write_text("pw-b\n")
    t = with_routes(
        lambda **kw: t,
        f"@a.example smtp:127.0.0.1:{s.port} tls=none user=alice password_file={t.dir / 'pa'}\n"
        f"@b.example smtp:127.0.0.1:{s.port} tls=none user=bob password_file={t.dir / 'pb'}\n",
    ).start()
    send(t, "me@lan.test", ["x@a.example", "y@b.example"])
    # bob's password is wrong for this sink: his recipient is not delivered
    # with alice's session.
    wait_for(lambda: s.messages and ("bob", "pw-b", False) in s.auth_seen, what="both attempts")
    wait_for(lambda: "y@b.example" in t.log_text() and "535" in t.log_text(), what="bob refused")
    assert rcpts_of(s) == ["x@a.example"], s.messages
    assert seen == ["alice"], seen


def test_mx_route_goes_to_mx_while_a_smarthost_is_set(tern_factory, sinks):
    mx, smarthost = sinks(), sinks()
    dns = FakeDns({
        ("lan.example", "MX"): [(10, "mx1.lan.example")],
        ("mx1.lan.example", "A"): ["127.0.0.1"],
    })
    try:
        t = with_routes(
            tern_factory, "@lan.example mx\n",
            dns_servers=dns.addr, mx_port=mx.port,
            smarthost=f"127.0.0.1:{smarthost.port}", smarthost_tls="none",
        ).start()
        send(t, "me@lan.test", ["u@lan.example", "v@far.test"])
        wait_for(lambda: mx.messages and smarthost.messages, what="both deliveries")
        assert rcpts_of(mx) == ["u@lan.example"]
        assert rcpts_of(smarthost) == ["v@far.test"]
        assert ("lan.example", "MX") in dns.queries
    finally:
        dns.close()


def test_local_route_delivers_to_a_maildir(tern_factory, sinks):
    smarthost = sinks()
    t = with_routes(
        tern_factory, "@router.lan local\n",
        smarthost=f"127.0.0.1:{smarthost.port}", smarthost_tls="none",
    ).start()
    send(t, "cron@lan.test", ["joe@router.lan", "far@remote.test"])
    wait_for(lambda: t.maildir("joe") and smarthost.messages, what="local and remote delivery")
    assert b"hello world" in t.maildir("joe")[0]
    assert rcpts_of(smarthost) == ["far@remote.test"]
    # The sendmail path decides the same way.
    r = subprocess.run([TERN_BIN, "-c", str(t.conf), "sendmail", "-i", "ann@router.lan"],
                       input=b"Subject: via sendmail\n\nlocal route\n", capture_output=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: t.maildir("ann"), what="sendmail to a local route")
    assert b"local route" in t.maildir("ann")[0]
    assert rcpts_of(smarthost) == ["far@remote.test"]


def test_check_config_names_bad_and_unsupported_lines(tern_factory):
    t = with_routes(
        tern_factory,
        "# routes\n"
        "@ok.example mx\n"
        "@bad.example smtp:host:25 tls=maybe\n"
        "@hook.example webhook:https://ntfy.example/alerts format=ntfy\n"
        "@o365.example smtp:smtp.office365.com:587 user=me@o365.example auth=xoauth2\n",
    )
    code, err = check_config(t)
    assert code == 1, err
    assert f"{t.routes}:3: tls=maybe" in err, err
    assert f"{t.routes}:4:" not in err, err  # webhook routes are supported
    assert f"{t.routes}:5: auth=xoauth2|oauthbearer needs oauth_token_command=" in err, err
    assert ":2:" not in err, err
    t.routes.write_text("@ok.example smtp:smtp.ok.example:465\n")
    code, err = check_config(t)
    assert code == 0, err
    assert f"warning: {t.routes}:1: smtp:smtp.ok.example:465 with tls=starttls" in err, err
    t.routes.write_text("@ok.example mx\n* local\n")
    code, err = check_config(t)
    assert code == 0, err


def test_unreachable_webhook_route_defers_and_never_goes_another_way(tern_factory, sinks):
    smarthost = sinks()
    t = with_routes(
        tern_factory, "@hook.example webhook:https://127.0.0.1:1/alerts\n",
        smarthost=f"127.0.0.1:{smarthost.port}", smarthost_tls="none",
    ).start()
    send(t, "me@lan.test", ["a@hook.example"])
    wait_for(lambda: "cannot connect" in t.log_text() and "status=deferred" in t.log_text(),
             what="deferral")
    assert not smarthost.messages
    assert t.queued()


def test_sighup_reloads_the_routes_file(tern_factory, sinks):
    one, two = sinks(), sinks()
    t = with_routes(tern_factory, f"* smtp:127.0.0.1:{one.port} tls=none\n").start()
    send(t, "me@lan.test", ["x@far.test"])
    wait_for(lambda: one.messages, what="first delivery")
    t.routes.write_text(f"* smtp:127.0.0.1:{two.port} tls=none\n")
    t.send(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in t.log_text(), what="reload")
    send(t, "me@lan.test", ["y@far.test"])
    wait_for(lambda: two.messages, what="second delivery")
    assert rcpts_of(one) == ["x@far.test"]
    assert rcpts_of(two) == ["y@far.test"]


def test_tern_test_goes_by_the_route_the_daemon_would_use(tern_factory, sinks):
    """`tern test` decides the route as the queue runner does: a routed
    address goes to its relay with the route's credentials, another one by
    the smarthost keys."""
    routed = sinks(auth=("routed", "pw1"))
    default = sinks()
    pw = tern_factory.base / "routed.pw"
    pw.write_text("pw1\n")
    t = with_routes(tern_factory,
                    f"# comment\n@far.test smtp:127.0.0.1:{routed.port} tls=none user=routed "
                    f"password_file={pw}\n",
                    smarthost=f"127.0.0.1:{default.port}", smarthost_tls="none")
    r = t.cmd("test", "u@far.test")
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert f":2: smtp:127.0.0.1:{routed.port} (tls=none)" in out, out
    assert "pw1" not in out, out
    assert [m["rcpts"] for m in routed.messages] == [["u@far.test"]]
    assert routed.auth_seen and routed.auth_seen[0][:2] == ("routed", "pw1")
    r = t.cmd("test", "u@other.test")
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert f"* route: smarthost 127.0.0.1:{default.port}" in out, out
    assert [m["rcpts"] for m in default.messages] == [["u@other.test"]]
