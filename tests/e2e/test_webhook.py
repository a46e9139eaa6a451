"""Webhook routes (issue 14, part 6; SPEC "Router mail", `routes` target
`webhook:URL format=ntfy|json`): the Subject and first text/plain part of
a message are POSTed over HTTPS (the test CA) to a local server; 2xx
delivers, 4xx bounces with the HTTP status, 5xx defers on the retry
schedule."""

import http.server
import json
import socket
import ssl
import threading
import time
from email.header import decode_header, make_header
from pathlib import Path

import pytest

from harness import FakeDns, Sink, wait_for
from test_outbound import send
from test_routes import check_config, rcpts_of, with_routes

CERTS = Path(__file__).resolve().parents[1] / "certs"


class Hook:
    """An HTTPS server on 127.0.0.1 that records each POST and answers
    the next scripted status (200 when the script is used up)."""

    def __init__(self, statuses=(), answer=b"{}"):
        self.requests = []
        self.statuses = list(statuses)
        self.answer = answer
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                hook.requests.append(
                    {"path": self.path, "headers": dict(self.headers.items()), "body": body}
                )
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(hook.answer)))
                self.end_headers()
                self.wfile.write(hook.answer)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(CERTS / "server.pem", CERTS / "server.key")
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"https://127.0.0.1:{self.port}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks():
    made = []

    def make(**kw):
        h = Hook(**kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def hooked(tern_factory, routes, **overrides):
    overrides.setdefault("tls_ca_file", str(CERTS / "ca.pem"))
    return with_routes(tern_factory, routes, **overrides)


def test_ntfy_format_posts_subject_as_title_and_text_as_body(tern_factory, hooks):
    hook = hooks()
    t = hooked(tern_factory, f"@hook.example webhook:{hook.url} format=ntfy\n").start()
    send(t, "cron@mx.test", ["alerts@hook.example"],
         b"Subject: Disk almost\r\n full\r\nFrom: cron@mx.test\r\n\r\nsda1 at 97%\r\nsee df\r\n")
    wait_for(lambda: hook.requests, what="the POST")
    r = hook.requests[0]
    assert r["path"] == "/alerts"
    assert r["headers"]["Title"] == "Disk almost full"
    assert r["headers"]["Content-Type"] == "text/plain; charset=utf-8"
    assert r["headers"]["Host"] == f"127.0.0.1:{hook.port}"
    assert r["body"] == b"sda1 at 97%\nsee df"
    wait_for(lambda: not t.queued(), what="queue empty")
    assert f"relay={hook.url} dsn=2.0.0 status=sent" in t.log_text()
    assert len(hook.requests) == 1


def test_ntfy_non_ascii_title_is_an_encoded_word(tern_factory, hooks):
    hook = hooks()
    t = hooked(tern_factory, f"@hook.example webhook:{hook.url}\n").start()
    send(t, "cron@mx.test", ["a@hook.example"],
         b"Subject: =?UTF-8?Q?=C3=A9chec?= de sauvegarde\r\n\r\nbody\r\n")
    wait_for(lambda: hook.requests, what="the POST")
    title = hook.requests[0]["headers"]["Title"]
    assert title.startswith("=?UTF-8?B?"), title
    assert str(make_header(decode_header(title))) == "échec de sauvegarde"


def test_json_format_is_escaped_and_takes_the_first_text_part(tern_factory, hooks):
    hook = hooks()
    t = hooked(tern_factory, f"@hook.example webhook:{hook.url} format=json\n").start()
    body = (
        b"Subject: =?UTF-8?B?QmFja3VwICJuaWdodGx5IiDDqWNoZWM=?=\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n"
        b"--b1\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n"
        b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"line1 \"q\"\r\nline2\ttab \\ back =C3=A9=\r\nnd\r\n"
        b"--b1--\r\n"
    )
    send(t, "cron@mx.test", ["a@hook.example"], body)
    wait_for(lambda: hook.requests, what="the POST")
    r = hook.requests[0]
    assert r["headers"]["Content-Type"] == "application/json"
    assert json.loads(r["body"]) == {
        "title": 'Backup "nightly" échec',
        "message": 'line1 "q"\nline2\ttab \\ back énd',
    }
    # The exact escaping (Gotify's /message takes this as is).
    assert r["body"] == (
        '{"title":"Backup \\"nightly\\" échec",'
        '"message":"line1 \\"q\\"\\nline2\\ttab \\\\ back énd"}'
    ).encode()


def test_500_then_200_defers_then_delivers_exactly_once(tern_factory, hooks):
    hook = hooks(statuses=[500])
    t = hooked(tern_factory, f"@hook.example webhook:{hook.url}\n", retry_schedule="1s").start()
    send(t, "cron@mx.test", ["a@hook.example", "b@hook.example"])
    wait_for(lambda: len(hook.requests) >= 2, timeout=20, what="the retry")
    wait_for(lambda: not t.queued(), what="queue empty")
    time.sleep(2.5)
    assert len(hook.requests) == 2, hook.requests
    log = t.log_text()
    assert "HTTP status 500" in log and "status=deferred" in log, log
    assert log.count(f"relay={hook.url} dsn=2.0.0 status=sent") == 2  # one line per recipient
    assert hook.requests[0]["body"] == hook.requests[1]["body"] == b"hello world"


def test_404_bounces_to_the_sender_naming_the_status(tern_factory, hooks):
    hook = hooks(statuses=[404], answer=b'{"error":"topic not found"}')
    # A token in the query (Gotify style) reaches the server, never the
    # log, the state file or the bounce.
    t = hooked(tern_factory, f"@hook.example webhook:{hook.url}?token=S3cret\n").start()
    send(t, "me@mx.test", ["a@hook.example"])
    wait_for(lambda: t.maildir("me"), what="the bounce")
    report = t.maildir("me")[0].decode(errors="replace")
    assert hook.requests[0]["path"] == "/alerts?token=S3cret"
    assert "S3cret" not in report and "S3cret" not in t.log_text()
    assert f"webhook {hook.url}?… answered HTTP status 404" in report, report
    assert "a@hook.example" in report
    assert "HTTP status 404" in report, report
    assert "topic not found" in report
    assert "Status: 5.0.0" in report
    wait_for(lambda: not t.queued(), what="queue empty")
    assert len(hook.requests) == 1
    assert "status=bounced" in t.log_text()


def test_a_domain_route_splits_one_message_between_webhook_and_smtp(tern_factory, hooks):
    hook = hooks()
    sink = Sink()
    try:
        t = hooked(tern_factory, f"@hook.example webhook:{hook.url} format=json\n",
                   smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send(t, "cron@mx.test", ["a@hook.example", "b@far.test"],
             b"Subject: both\r\n\r\nto two places\r\n")
        wait_for(lambda: hook.requests and sink.messages, what="both deliveries")
        wait_for(lambda: not t.queued(), what="queue empty")
        assert rcpts_of(sink) == ["b@far.test"]
        assert len(hook.requests) == 1
        assert json.loads(hook.requests[0]["body"]) == {"title": "both", "message": "to two places"}
    finally:
        sink.close()


def test_host_name_is_resolved_and_verified_through_the_configured_dns(tern_factory, hooks):
    """The URL's host goes through tern's resolver (`dns_servers`), and the
    certificate is checked against that name (the test certificate names
    mx.test)."""
    hook = hooks()
    dns = FakeDns({("mx.test", "A"): ["127.0.0.1"]})
    try:
        url = f"https://mx.test:{hook.port}/alerts"
        t = hooked(tern_factory, f"@hook.example webhook:{url}\n", dns_servers=dns.addr).start()
        send(t, "cron@mx.test", ["a@hook.example"])
        wait_for(lambda: hook.requests, what="the POST")
        assert hook.requests[0]["headers"]["Host"] == f"mx.test:{hook.port}"
        assert ("mx.test", "A") in dns.queries
        wait_for(lambda: f"relay={url} dsn=2.0.0 status=sent" in t.log_text(), what="sent")
    finally:
        dns.close()


def test_a_silent_server_times_out_and_defers(tern_factory):
    """The exchange's one deadline (WEBHOOK_TIMEOUT, 30 s) ends a server
    that accepts and never answers, at the daemon's tick; slow test."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    port = silent.getsockname()[1]
    try:
        t = hooked(tern_factory, f"@hook.example webhook:https://127.0.0.1:{port}/x\n").start()
        send(t, "cron@mx.test", ["a@hook.example"])
        wait_for(lambda: "status=deferred" in t.log_text(), timeout=45, what="the timeout")
        assert f"timeout waiting for the webhook's HTTP response from 127.0.0.1:{port}" in t.log_text()
        assert t.queued()
    finally:
        silent.close()


def test_untrusted_certificate_defers(tern_factory, hooks):
    hook = hooks()
    t = hooked(tern_factory, f"@hook.example webhook:{hook.url}\n",
               tls_ca_file=str(CERTS / "other-ca.pem")).start()
    send(t, "cron@mx.test", ["a@hook.example"])
    wait_for(lambda: "status=deferred" in t.log_text(), what="the deferral")
    assert "TLS with 127.0.0.1:" in t.log_text()
    assert not hook.requests
    assert t.queued()


def test_check_config_accepts_webhooks_and_refuses_plain_http(tern_factory):
    t = hooked(tern_factory, "@a.example webhook:https://ntfy.example/alerts format=json\n"
                             "@b.example webhook:https://[::1]:8443/m?x=1\n")
    code, err = check_config(t)
    assert code == 0, err
    t.routes.write_text("@a.example mx\n@b.example webhook:http://ntfy.example/x\n")
    code, err = check_config(t)
    assert code == 1, err
    assert f"{t.routes}:2: bad webhook URL" in err and "https://" in err, err


def test_tern_test_posts_a_test_notification_through_the_webhook_route(tern_factory, hooks):
    ok, gone = hooks(), hooks(statuses=[410])
    t = hooked(tern_factory, f"@hook.example webhook:{ok.url} format=json\n"
                             f"@gone.example webhook:{gone.url}\n")
    r = t.cmd("test", "a@hook.example")
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "Result: accepted by " + ok.url in out, out
    assert json.loads(ok.requests[0]["body"]) == {
        "title": "tern test from mx.test",
        "message": "This is a test notification sent by `tern test` on mx.test for a@hook.example.",
    }
    r = t.cmd("test", "b@gone.example")
    out = r.stdout.decode()
    assert r.returncode == 69, out
    assert "HTTP status 410" in out and "would bounce" in out, out
