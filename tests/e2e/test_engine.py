"""The outbound delivery machine in the real daemon (issue 13 item 1):
the cases its unit scenarios cannot show end to end: a port-465 smarthost
spoken to in STARTTLS mode, and the one plaintext retry after a failed
opportunistic handshake."""

import smtplib
import socket
import ssl
import threading
import time
from pathlib import Path

from harness import FakeDns, Sink, close_served, wait_for

CERTS = Path(__file__).resolve().parents[1] / "certs"


def send(t, rcpts, body=b"Subject: engine\r\n\r\nhello\r\n"):
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail("a@lan.test", rcpts, body)


class SilentServer:
    """Accepts connections and says nothing, as an implicit-TLS server
    waiting for a ClientHello does."""

    def __init__(self, host, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(8)
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        close_served(self.sock, self.thread)
        for c in self.conns:
            c.close()


def test_port_465_smarthost_in_starttls_mode_defers_soon_as_a_tls_mode_mismatch(tern_factory):
    """`smarthost_tls = starttls` (the default) against port 465 waited the
    whole client_timeout (300 s) and said "timeout waiting for the server"."""
    # A loopback address of its own: port 465 is the point of the test.
    host = "127.46.5.1"
    server = SilentServer(host, 465)
    try:
        t = tern_factory(smarthost=f"{host}:465", client_timeout="120s").start()
        started = time.monotonic()
        send(t, ["u@far.test"])
        wait_for(lambda: "status=deferred" in t.log_text(), timeout=30, what="the deferral")
        took = time.monotonic() - started
        assert 9 <= took < 25, took
        line = next(l for l in t.log_text().splitlines() if "status=deferred" in l)
        assert "dsn=4.7.5" in line, line
        assert "TLS mode mismatch" in line and "set smarthost_tls = tls" in line, line
        # The state file is written just after the log line.
        wait_for(lambda: "port 465 speaks implicit TLS" in t.cmd("mailq").stdout.decode(),
                 what="the reason in mailq")
    finally:
        server.close()


def test_failed_opportunistic_tls_is_retried_once_in_plaintext(tern_factory):
    """An MX whose STARTTLS handshake fails gets the message in plaintext
    on a second connection to the same address."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(CERTS / "server.pem"), str(CERTS / "server.key"))
    # TLS 1.2 with a CBC suite without forward secrecy, which tern's TLS
    # library does not offer: every handshake fails.
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("AES128-SHA")
    sink = Sink(tls=ctx)
    dns = FakeDns({("far.test", "MX"): [(10, "mx.far.test")], ("mx.far.test", "A"): ["127.0.0.1"]})
    try:
        t = tern_factory(dns_servers=dns.addr, mx_port=sink.port).start()
        send(t, ["u@far.test"])
        wait_for(lambda: sink.messages, what="plaintext delivery")
        assert not sink.messages[0]["tls"]
        assert sink.sessions == 2, sink.sessions
        assert "retrying in plaintext" in t.log_text()
        wait_for(lambda: "status=sent" in t.log_text(), what="sent log line")
    finally:
        sink.close()
        dns.close()
