"""OAuth2 to the smarthost (issue 14 part 3, the token-command half; SPEC
"Router mail": `smarthost_auth = xoauth2|oauthbearer`,
`smarthost_oauth_token_command`, per route `auth=` and
`oauth_token_command=`). The token command is a script written here that
counts its runs; the sink accepts only its one token. The 30 s deadline of
a hanging command is not tested end to end (no test-only keys); the unit
test `daemon::oauth::tests::runs_caches_and_forgets` kills one."""

import subprocess

import pytest

from harness import TERN_BIN, Sink, wait_for
from test_outbound import send

USER = "me@example.com"


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


def token_command(d, token="tok-1", fail=False):
    """A script printing the token in d/token (exit 1 when `fail`); each run
    appends a line to d/runs."""
    (d / "token").write_text(token + "\n")
    script = d / "get-token"
    script.write_text(
        "#!/bin/sh\n"
        f"echo run >> {d / 'runs'}\n"
        + ("exit 1\n" if fail else f"cat {d / 'token'}\n")
    )
    script.chmod(0o755)
    return script


def runs(d):
    p = d / "runs"
    return len(p.read_text().splitlines()) if p.exists() else 0


def oauth_tern(tern_factory, tmp_path, sink, mechanism="xoauth2", **more):
    script = token_command(tmp_path, **{k: more.pop(k) for k in ("token", "fail") if k in more})
    return tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                        smarthost_user=USER, smarthost_auth=mechanism,
                        smarthost_oauth_token_command=f"{script} --account {USER}", **more)


def test_xoauth2_delivers_and_the_token_is_cached(tern_factory, tmp_path, sinks):
    sink = sinks(oauth="tok-1")
    t = oauth_tern(tern_factory, tmp_path, sink)
    r = t.cmd("check-config")
    assert r.returncode == 0, r.stderr.decode()
    t.start()
    send(t, "cam@lan.test", ["a@far.test"])
    wait_for(lambda: sink.messages, what="first delivery")
    assert sink.oauth_seen == [("XOAUTH2", f"user={USER}\x01auth=Bearer tok-1\x01\x01", None)]
    assert sink.messages[0]["auth"] == USER
    # After the idle session is gone: a new session, the cached token.
    wait_for(lambda: "QUIT" in sink.commands, what="idle session closed")
    send(t, "cam@lan.test", ["b@far.test"])
    wait_for(lambda: len(sink.messages) == 2, what="second delivery")
    assert sink.sessions == 2
    assert [s[0] for s in sink.oauth_seen] == ["XOAUTH2", "XOAUTH2"]
    assert runs(tmp_path) == 1
    log = t.log_text()
    assert "credentials redacted" in log
    assert "tok-1" not in log and "dG9rLTE" not in log


def test_refused_token_defers_and_is_fetched_again(tern_factory, tmp_path, sinks):
    sink = sinks(oauth="good")
    t = oauth_tern(tern_factory, tmp_path, sink, token="bad", retry_schedule="1s").start()
    send(t, "cam@lan.test", ["a@far.test"])
    wait_for(lambda: "status=deferred" in t.log_text(), what="deferral")
    # Google's dance: a 334 JSON error, an empty line, then the 535.
    assert sink.oauth_seen[0][0] == "XOAUTH2" and sink.oauth_seen[0][2] == ""
    assert "535 5.7.8" in t.log_text()
    assert not sink.messages and t.queued()
    # The refused token was dropped: the retry runs the command again.
    (tmp_path / "token").write_text("good\n")
    wait_for(lambda: sink.messages, timeout=20, what="delivery with the new token")
    assert runs(tmp_path) >= 2
    assert sink.oauth_seen[-1][1] == f"user={USER}\x01auth=Bearer good\x01\x01"


def test_failing_token_command_defers_without_connecting(tern_factory, tmp_path, sinks):
    sink = sinks(oauth="tok-1")
    t = oauth_tern(tern_factory, tmp_path, sink, fail=True).start()
    send(t, "cam@lan.test", ["a@far.test"])
    wait_for(lambda: "status=deferred" in t.log_text(), what="deferral")
    log = t.log_text()
    assert "no OAuth2 access token: the token command failed (exit status: 1)" in log, log
    assert "4.7.0" in log, log
    assert sink.sessions == 0
    assert t.queued()
    assert runs(tmp_path) == 1


def test_oauthbearer_through_a_route(tern_factory, tmp_path, sinks):
    sink, smarthost = sinks(oauth="tok-r"), sinks()
    script = token_command(tmp_path, token="tok-r")
    t = tern_factory(smarthost=f"127.0.0.1:{smarthost.port}", smarthost_tls="none")
    routes = t.dir / "routes"
    routes.write_text(f"@far.test smtp:127.0.0.1:{sink.port} tls=none user={USER} "
                      f"auth=oauthbearer oauth_token_command={script}\n")
    t.settings["routes"] = str(routes)
    t.write_config()
    r = t.cmd("check-config")
    assert r.returncode == 0, r.stderr.decode()
    t.start()
    send(t, "cam@lan.test", ["a@far.test"])
    wait_for(lambda: sink.messages, what="delivery")
    assert sink.oauth_seen == [(
        "OAUTHBEARER",
        f"n,a={USER},\x01host=127.0.0.1\x01port={sink.port}\x01auth=Bearer tok-r\x01\x01",
        None,
    )]
    assert not smarthost.messages


def test_tern_test_runs_the_token_command(tern_factory, tmp_path, sinks):
    sink = sinks(oauth="tok-1")
    t = oauth_tern(tern_factory, tmp_path, sink)
    r = subprocess.run([TERN_BIN, "-c", str(t.conf), "test", "-f", "cam@lan.test",
                        "you@far.test"], capture_output=True, timeout=30)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "> AUTH XOAUTH2 <credentials hidden>" in out, out
    assert "tok-1" not in out
    assert sink.oauth_seen[0][1] == f"user={USER}\x01auth=Bearer tok-1\x01\x01"


def test_tern_test_names_the_token_command_when_it_fails(tern_factory, tmp_path, sinks):
    sink = sinks(oauth="tok-1")
    t = oauth_tern(tern_factory, tmp_path, sink, fail=True)
    r = subprocess.run([TERN_BIN, "-c", str(t.conf), "test", "-f", "cam@lan.test",
                        "you@far.test"], capture_output=True, timeout=30)
    out = r.stdout.decode()
    assert r.returncode == 75, out + r.stderr.decode()
    assert "Result: not delivered: no OAuth2 access token: the token command failed" in out, out
    assert "Setting: smarthost_oauth_token_command" in out, out
    assert sink.sessions == 0
