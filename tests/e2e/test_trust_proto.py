"""Issue 11, protocol trust: input that crashed or stalled the daemon, peer
text that reached the log raw, DNS that ignored EDNS(0). Each test failed on
main @ 80f8c34 unless its docstring says it is a guard."""

import smtplib
import socket
import ssl
import time
from pathlib import Path

from harness import free_port, wait_for

CERTS = Path(__file__).resolve().parents[1] / "certs"


def read_reply(sock, timeout=10):
    """Reads one (possibly multi-line) reply; returns its text."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data.decode(errors="replace")
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and any(len(l) >= 4 and l[3:4] == b" " for l in lines[:-1]):
            return data.decode(errors="replace")


def is_closed_by_peer(sock, within):
    """True if the peer closes the connection within `within` seconds."""
    sock.settimeout(within)
    try:
        while True:
            if sock.recv(4096) == b"":
                return True
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


def still_serves(t, rcpt):
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail("a@x.test", [f"{rcpt}@localhost"], b"Subject: alive\r\n\r\nstill here\r\n")
    got = wait_for(lambda: t.maildir(rcpt), what="delivery after the hostile client")
    assert b"still here" in got[0]


# --- item 1: one line killed the daemon --------------------------------------


def test_multibyte_command_does_not_kill_the_daemon(tern):
    for line in ["MAIL FROMé<a@b.test>", "RCPT TOˊ", "MAIL FRO€:<a@b.test>", "EHLO é😀"]:
        with socket.create_connection(("127.0.0.1", tern.port), timeout=10) as s:
            assert read_reply(s).startswith("220")
            s.sendall(line.encode() + b"\r\n")
            r = read_reply(s)
            assert r[:1] in "245", (line, r)
            s.sendall(b"QUIT\r\n")
            read_reply(s)
        assert tern.proc.poll() is None, f"daemon died on {line!r}:\n{tern.log_text()[-2000:]}"
    still_serves(tern, "second")
    assert "panicked" not in tern.log_text()


# --- item 5: STARTTLS without a handshake held a slot forever ----------------


def tls_tern(tern_factory, **overrides):
    return tern_factory(
        tls_cert=CERTS / "server.pem",
        tls_key=CERTS / "server.key",
        smtps_listen=f"127.0.0.1:{free_port()}",
        server_timeout="2s",
        **overrides,
    )


def test_starttls_without_handshake_is_closed_and_frees_the_slot(tern_factory):
    t = tls_tern(tern_factory, max_connections="2").start()
    silent = []
    for _ in range(2):
        s = socket.create_connection(("127.0.0.1", t.port), timeout=10)
        assert read_reply(s).startswith("220")
        s.sendall(b"EHLO c.test\r\n")
        assert "STARTTLS" in read_reply(s)
        s.sendall(b"STARTTLS\r\n")
        assert read_reply(s).startswith("220 2.0.0 Ready to start TLS")
        silent.append(s)
    # Both slots are taken now.
    with socket.create_connection(("127.0.0.1", t.port), timeout=10) as extra:
        assert read_reply(extra).startswith("421")
    started = time.monotonic()
    for s in silent:
        assert is_closed_by_peer(s, within=8), "a silent STARTTLS client kept its connection"
        s.close()
    assert time.monotonic() - started < 8
    still_serves(t, "afterwards")


def test_implicit_tls_without_handshake_is_closed(tern_factory):
    """A guard, not a regression: on main the smtps handshake was already
    bounded by the session's first deadline. It must stay so."""
    t = tls_tern(tern_factory).start()
    port = int(t.settings["smtps_listen"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert is_closed_by_peer(s, within=8), "a silent smtps client kept its connection"
    # Half a ClientHello, then silence.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        assert is_closed_by_peer(s, within=8), "a stalled handshake kept its connection"
    # And a real client still gets through.
    ctx = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=10) as c:
        assert c.noop()[0] == 250


# --- item 14: peer text reached the log raw ----------------------------------


CONTROL = [b"\x1b", b"\x07", b"\x00", b"\x7f", b"\r"]


def raw_controls(data):
    return [c for c in CONTROL if c in data]


def test_control_characters_in_helo_are_escaped_in_the_log(tern):
    """Control octets in a HELO name are refused (they would also reach the
    Received: field); what is accepted but not printable ASCII (here a
    right-to-left override, which can disguise a terminal line) reaches the
    log escaped."""
    with socket.create_connection(("127.0.0.1", tern.port), timeout=10) as s:
        assert read_reply(s).startswith("220")
        s.sendall(b"EHLO a\x1b[31mb\x07c\x7fd\x00e\r\n")
        assert read_reply(s).startswith("501")
        s.sendall("EHLO a\u202eb\r\n".encode())
        assert read_reply(s).startswith("250")
        s.sendall(b"MAIL FROM:<x@y.test>\r\nRCPT TO:<esc@localhost>\r\nDATA\r\n")
        r = read_reply(s)
        while "354" not in r:
            r = read_reply(s)
        s.sendall(b"Subject: esc\r\n\r\nbody\r\n.\r\n")
        assert "250" in read_reply(s)
        s.sendall(b"QUIT\r\n")
    wait_for(lambda: tern.maildir("esc"), what="delivery")
    log = tern.log.read_bytes()
    assert b"client=a\\xe2\\x80\\xaeb" in log, log[-2000:]
    assert "\u202e".encode() not in log
    assert raw_controls(log) == [], log[-2000:]


def test_remote_reply_with_escapes_is_escaped_in_log_and_mailq(tern_factory):
    from harness import Sink

    sink = Sink({"rcpt": "451 4.2.0 busy \x1b]0;owned\x07 \x1b[2J"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
            c.sendmail("a@x.test", ["far@remote.test"], b"Subject: q\r\n\r\nqueued\r\n")
        wait_for(lambda: "status=deferred" in t.log_text(), what="deferral")
        log = t.log.read_bytes()
        assert b"busy \\x1b]0;owned\\x07 \\x1b[2J" in log, log[-2000:]
        assert raw_controls(log) == [], log[-2000:]
        # The state file is written just after the log line.
        q = wait_for(lambda: (lambda q: q if b"(pending)" not in q else None)(t.cmd("mailq").stdout),
                     what="the reason in mailq")
        assert b"busy \\x1b]0;owned" in q and raw_controls(q) == [], q
        show = t.cmd("queue", "show", t.queued()[0]).stdout
        assert raw_controls(show) == [], show
    finally:
        sink.close()


# --- siblings: deadlines on the outbound side --------------------------------


def test_outbound_server_that_stops_reading_mid_body_is_dropped(tern_factory):
    """A next hop that answers 354 and then reads nothing held the outbound
    connection (and its slot) forever: the body had no deadline."""
    import threading

    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    conns = []

    def serve():
        c, _ = lsock.accept()
        conns.append(c)
        f = c.makefile("rb")
        c.sendall(b"220 stall.test ESMTP\r\n")
        while True:
            line = f.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"DATA":
                c.sendall(b"354 go ahead\r\n")
                return  # and never read again
            c.sendall(b"250 stall.test\r\n" if verb == b"EHLO" else b"250 ok\r\n")

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    t = tern_factory(smarthost=f"127.0.0.1:{port}", smarthost_tls="none", client_timeout="2s").start()
    body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 8000
    with smtplib.SMTP("127.0.0.1", t.port, timeout=30) as c:
        c.sendmail("a@x.test", ["far@remote.test"], body)
    wait_for(lambda: "status=deferred" in t.log_text(), timeout=20, what="the stalled delivery deferred")
    # tern closed its end: draining what it managed to send ends in EOF.
    conn = conns[0]
    conn.settimeout(10)
    while conn.recv(65536):
        pass
    conn.close()
    lsock.close()


# --- item 15: EDNS(0) with a fallback for servers that refuse it --------------


def test_mx_delivery_through_a_dns_server_that_refuses_edns(tern_factory):
    import struct

    from harness import FakeDns, Sink

    class NoEdnsDns(FakeDns):
        """Answers FORMERR to any query with an additional record (OPT),
        as old servers and some middleboxes do."""

        def __init__(self, *a, **kw):
            self.with_opt = 0
            super().__init__(*a, **kw)

        def _answer(self, q):
            if struct.unpack(">H", q[10:12])[0] > 0:
                self.with_opt += 1
                qid = struct.unpack(">H", q[:2])[0]
                return struct.pack(">HHHHHH", qid, 0x8181, 0, 0, 0, 0)
            return super()._answer(q)

    dns = NoEdnsDns({("far.test", "MX"): [(10, "mx.far.test")], ("mx.far.test", "A"): ["127.0.0.1"]})
    sink = Sink()
    try:
        t = tern_factory(dns_servers=dns.addr, mx_port=sink.port).start()
        with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
            c.sendmail("a@lan.test", ["u@far.test"], b"Subject: edns\r\n\r\nvia plain DNS\r\n")
        wait_for(lambda: sink.messages, what="MX delivery after the EDNS fallback")
        assert dns.with_opt == 1, "the first query carried OPT; the server was then remembered"
    finally:
        dns.close()
        sink.close()
