"""OAuth2 built-in refresh (issue 14 part 3; SPEC "Router mail":
`smarthost_oauth_token_url`, `smarthost_oauth_client_id`,
`smarthost_oauth_client_secret_file`, `smarthost_oauth_refresh_token_file`,
`tern oauth login`).

A local HTTPS token endpoint (http.server + ssl, the test CA's server
certificate, trusted through `tls_ca_file`) issues access tokens for the
current refresh token and rotates it; the sink accepts XOAUTH2 only with
the access token issued last. Nothing leaves loopback."""

import json
import os
import ssl
import stat
import subprocess
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness import TERN_BIN, Sink, free_port, wait_for
from test_outbound import send

CERTS = Path(__file__).resolve().parent.parent / "certs"
USER = "me@example.com"
CLIENT_ID = "1234.apps.example"
SECRET = "s3cr&t=+/"


class TokenServer:
    """The provider: POST /token (refresh and device-code grants), POST
    /device (device authorization). `mode`: "ok", "invalid_grant"."""

    def __init__(self, sink=None, refresh="rt-0", rotate=True, port=None):
        self.sink = sink
        self.refresh = refresh
        self.rotate = rotate
        self.mode = "ok"
        self.issued = 0
        self.requests = []  # (path, form dict)
        self.pending = 2  # device flow: authorization_pending answers left
        self.port = port or free_port()
        self.httpd = None
        self.start()

    def start(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length).decode()
                form = dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))
                server.requests.append((self.path, form, self.headers.get("Content-Type")))
                status, body = server.answer(self.path, form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(CERTS / "server.pem", CERTS / "server.key")
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        self.httpd = httpd
        threading.Thread(target=httpd.serve_forever, daemon=True).start()

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    @property
    def url(self):
        return f"https://127.0.0.1:{self.port}"

    def answer(self, path, form):
        if path == "/device":
            return 200, {"device_code": "dev-code-1", "user_code": "WDJB-MJHT",
                         "verification_uri": f"{self.url}/activate",
                         "expires_in": 60, "interval": 1}
        if path != "/token":
            return 404, {"error": "not_found"}
        grant = form.get("grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            if form.get("device_code") != "dev-code-1":
                return 400, {"error": "invalid_grant"}
            if self.pending > 0:
                self.pending -= 1
                return 428, {"error": "authorization_pending",
                             "error_description": "Precondition Required"}
            return 200, {"access_token": "at-login", "expires_in": 3599,
                         "refresh_token": "1//rt-from-login", "token_type": "Bearer"}
        if grant != "refresh_token":
            return 400, {"error": "unsupported_grant_type"}
        if self.mode == "invalid_grant" or form.get("refresh_token") != self.refresh:
            return 400, {"error": "invalid_grant",
                         "error_description": "Token has been expired or revoked."}
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != SECRET:
            return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
        self.issued += 1
        access = f"ya29.at-{self.issued}"
        if self.sink is not None:
            self.sink.oauth = access
        body = {"access_token": access, "expires_in": 3599, "token_type": "Bearer",
                "scope": "https://mail.google.com/", "extra": {"nested": [1, 2]}}
        if self.rotate:
            self.refresh = f"rt-{self.issued}"
            body["refresh_token"] = self.refresh
        return 200, body


@pytest.fixture
def servers():
    made = []

    def make(cls, **kw):
        s = cls(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        (s.stop if isinstance(s, TokenServer) else s.close)()


def refresh_tern(tern_factory, tmp_path, sink, token_server, refresh="rt-0", **more):
    rt = tmp_path / "refresh-token"
    rt.write_text(refresh + "\n")
    rt.chmod(0o600)
    secret = tmp_path / "client-secret"
    secret.write_text(SECRET + "\n")
    return tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                        smarthost_user=USER, smarthost_auth="xoauth2",
                        smarthost_oauth_token_url=f"{token_server.url}/token",
                        smarthost_oauth_client_id=CLIENT_ID,
                        smarthost_oauth_client_secret_file=secret,
                        smarthost_oauth_refresh_token_file=rt,
                        tls_ca_file=CERTS / "ca.pem", **more), rt


def test_refresh_grant_delivers_and_writes_the_rotated_token(tern_factory, tmp_path, servers):
    sink = servers(Sink, oauth="nothing-issued-yet")
    ts = servers(TokenServer, sink=sink)
    t, rt = refresh_tern(tern_factory, tmp_path, sink, ts)
    r = t.cmd("check-config")
    assert r.returncode == 0, r.stderr.decode()
    t.start()
    send(t, "cam@lan.test", ["a@far.test"])
    wait_for(lambda: sink.messages, timeout=15, what="delivery")
    assert sink.oauth_seen == [("XOAUTH2", f"user={USER}\x01auth=Bearer ya29.at-1\x01\x01", None)]
    # The request: a form POST with every field escaped.
    path, form, ctype = ts.requests[0]
    assert (path, ctype) == ("/token", "application/x-www-form-urlencoded")
    assert form == {"grant_type": "refresh_token", "refresh_token": "rt-0",
                    "client_id": CLIENT_ID, "client_secret": SECRET}
    # The rotated refresh token, written atomically with mode 0600.
    wait_for(lambda: rt.read_text() == "rt-1\n", what="rotated refresh token")
    assert stat.S_IMODE(os.stat(rt).st_mode) == 0o600
    assert os.stat(rt).st_uid == os.geteuid()
    assert sorted(p.name for p in tmp_path.iterdir() if "refresh" in p.name) == ["refresh-token"]
    # A second message uses the cached access token: no new request.
    wait_for(lambda: "QUIT" in sink.commands, what="idle session closed")
    send(t, "cam@lan.test", ["b@far.test"])
    wait_for(lambda: len(sink.messages) == 2, what="second delivery")
    assert len(ts.requests) == 1
    log = t.log_text()
    assert "ya29.at-1" not in log and "rt-1" not in log and SECRET not in log


def test_token_endpoint_down_defers_then_delivers(tern_factory, tmp_path, servers):
    sink = servers(Sink, oauth="nothing-issued-yet")
    ts = servers(TokenServer, sink=sink)
    ts.stop()
    t, rt = refresh_tern(tern_factory, tmp_path, sink, ts, retry_schedule="1s")
    t.start()
    send(t, "cam@lan.test", ["a@far.test"])
    wait_for(lambda: "status=deferred" in t.log_text(), timeout=15, what="deferral")
    log = t.log_text()
    assert f"token endpoint {ts.url}/token: connect failed" in log, log
    assert "4.7.0" in log and "no OAuth2 access token" in log, log
    assert sink.sessions == 0 and not sink.messages
    assert t.queued()
    ts.start()
    wait_for(lambda: sink.messages, timeout=30, what="delivery after the endpoint is back")
    assert sink.oauth_seen[-1][1] == f"user={USER}\x01auth=Bearer ya29.at-1\x01\x01"
    assert rt.read_text() == "rt-1\n"


def test_invalid_grant_defers_and_is_logged(tern_factory, tmp_path, servers):
    sink = servers(Sink, oauth="nothing-issued-yet")
    ts = servers(TokenServer, sink=sink)
    ts.mode = "invalid_grant"
    t, rt = refresh_tern(tern_factory, tmp_path, sink, ts, retry_schedule="1s")
    t.start()
    send(t, "cam@lan.test", ["a@far.test"])
    wait_for(lambda: "status=deferred" in t.log_text(), timeout=15, what="deferral")
    log = t.log_text()
    assert ("refused the refresh: HTTP 400 error=invalid_grant "
            "error_description=\"Token has been expired or revoked.\"") in log, log
    assert "tern oauth login" in log
    assert "4.7.0" in log
    assert "status=bounced" not in log and "status=failed" not in log
    assert sink.sessions == 0 and t.queued()
    # Never bounced: still queued after further attempts.
    wait_for(lambda: log_count(t, "error=invalid_grant") >= 2, timeout=20, what="a retry")
    assert t.queued()
    assert rt.read_text() == "rt-0\n"


def log_count(t, text):
    return t.log_text().count(text)


def test_check_config_names_an_unreadable_refresh_token_file(tern_factory, tmp_path, servers):
    sink = servers(Sink)
    ts = servers(TokenServer)
    t, rt = refresh_tern(tern_factory, tmp_path, sink, ts)
    rt.unlink()
    r = t.cmd("check-config")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert f"smarthost_oauth_refresh_token_file {rt}" in err and "tern oauth login" in err, err
    t.settings["smarthost_oauth_token_command"] = "/bin/echo tok"
    t.write_config()
    r = t.cmd("check-config")
    assert r.returncode == 1
    assert "mutually exclusive" in r.stderr.decode()


def test_oauth_login_device_flow_writes_the_refresh_token(tern_factory, tmp_path, servers):
    ts = servers(TokenServer)
    t = tern_factory(tls_ca_file=CERTS / "ca.pem")
    rt = tmp_path / "etc" / "oauth-refresh"
    rt.parent.mkdir()
    secret = tmp_path / "client-secret"
    secret.write_text(SECRET + "\n")
    r = subprocess.run(
        [TERN_BIN, "-c", str(t.conf), "oauth", "login", "--provider", "google",
         "--client-id", CLIENT_ID, "--client-secret-file", str(secret),
         "--device-url", f"{ts.url}/device", "--token-url", f"{ts.url}/token",
         "--refresh-token-file", str(rt)],
        capture_output=True, timeout=60)
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, out + err
    assert (f"To allow tern to send mail, open {ts.url}/activate "
            f"and enter the code WDJB-MJHT") in out, out
    assert f"Refresh token written to {rt}" in out, out
    assert rt.read_text() == "1//rt-from-login\n"
    assert stat.S_IMODE(os.stat(rt).st_mode) == 0o600
    # The device request, then pending twice, then success.
    paths = [p for p, _, _ in ts.requests]
    assert paths == ["/device", "/token", "/token", "/token"], paths
    assert ts.requests[0][1] == {"client_id": CLIENT_ID, "scope": "https://mail.google.com/"}
    assert ts.requests[1][1] == {
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": "dev-code-1", "client_id": CLIENT_ID, "client_secret": SECRET}
    assert "1//rt-from-login" not in out + err


def test_oauth_login_reports_a_denied_request(tern_factory, tmp_path, servers):
    ts = servers(TokenServer)
    ts.pending = 0
    orig = ts.answer

    def denied(path, form):
        if path == "/token":
            return 400, {"error": "access_denied", "error_description": "The user said no"}
        return orig(path, form)

    ts.answer = denied
    t = tern_factory(tls_ca_file=CERTS / "ca.pem")
    rt = tmp_path / "rt"
    r = subprocess.run(
        [TERN_BIN, "-c", str(t.conf), "oauth", "login", "--client-id", CLIENT_ID,
         "--scope", "s", "--device-url", f"{ts.url}/device", "--token-url", f"{ts.url}/token",
         "--refresh-token-file", str(rt)],
        capture_output=True, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 69, err
    assert "error=access_denied" in err and "denied" in err, err
    assert not rt.exists()


def test_tern_test_runs_the_refresh_grant(tern_factory, tmp_path, servers):
    sink = servers(Sink, oauth="nothing-issued-yet")
    ts = servers(TokenServer, sink=sink)
    t, rt = refresh_tern(tern_factory, tmp_path, sink, ts)
    r = t.cmd("test", "-f", "cam@lan.test", "you@far.test")
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "> AUTH XOAUTH2 <credentials hidden>" in out, out
    assert "ya29.at-1" not in out
    assert sink.oauth_seen[0][1] == f"user={USER}\x01auth=Bearer ya29.at-1\x01\x01"
    assert rt.read_text() == "rt-1\n"
    # A revoked refresh token: not delivered, the setting to change named.
    ts.mode = "invalid_grant"
    r = t.cmd("test", "-f", "cam@lan.test", "you@far.test")
    out = r.stdout.decode()
    assert r.returncode == 75, out + r.stderr.decode()
    assert "error=invalid_grant" in out, out
    assert "Setting: smarthost_oauth_refresh_token_file (tern oauth login)" in out, out


def test_refresh_grant_on_a_route_with_oauthbearer(tern_factory, tmp_path, servers):
    sink, smarthost = servers(Sink, oauth="nothing-issued-yet"), servers(Sink)
    ts = servers(TokenServer, sink=sink, rotate=False)
    rt = tmp_path / "route-refresh"
    rt.write_text("rt-0\n")
    secret = tmp_path / "client-secret"
    secret.write_text(SECRET + "\n")
    t = tern_factory(smarthost=f"127.0.0.1:{smarthost.port}", smarthost_tls="none",
                     tls_ca_file=CERTS / "ca.pem")
    routes = t.dir / "routes"
    routes.write_text(f"@far.test smtp:127.0.0.1:{sink.port} tls=none user={USER} "
                      f"auth=oauthbearer oauth_token_url={ts.url}/token oauth_client_id={CLIENT_ID} "
                      f"oauth_client_secret_file={secret} oauth_refresh_token_file={rt}\n")
    t.settings["routes"] = str(routes)
    t.write_config()
    r = t.cmd("check-config")
    assert r.returncode == 0, r.stderr.decode()
    t.start()
    send(t, "cam@lan.test", ["a@far.test"])
    wait_for(lambda: sink.messages, timeout=15, what="delivery")
    assert sink.oauth_seen == [(
        "OAUTHBEARER",
        f"n,a={USER},\x01host=127.0.0.1\x01port={sink.port}\x01auth=Bearer ya29.at-1\x01\x01",
        None,
    )]
    assert not smarthost.messages
    # Not rotated: the file is left alone.
    assert rt.read_text() == "rt-0\n"
