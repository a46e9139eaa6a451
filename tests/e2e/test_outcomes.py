"""Typed outcomes end to end (issue 13 item 2): for each way a delivery can
go wrong, the log line (`dsn=`, `status=`, the sentence), `mailq` and, for
final failures, the bounce in the sender's mailbox carry the right RFC 3463
code and words a router admin understands. Replies tern makes up itself
are never shown as "HOST said:"; a server's reply always is.

Every peer is on 127.0.0.1; dns_servers points at a loopback FakeDns or a
closed loopback port. Certificates: tests/certs (README)."""

import email
import time
import re
import smtplib
import ssl
from pathlib import Path

import pytest

from harness import FakeDns, Sink, close_served, free_port, wait_for

CERTS = Path(__file__).resolve().parents[1] / "certs"


def server_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(CERTS / "server.pem"), str(CERTS / "server.key"))
    return ctx


def send(t, sender, rcpts, body=b"Subject: outcome\r\n\r\nhello\r\n"):
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail(sender, rcpts, body)


def outcome_line(t, rcpt, status):
    """The log line for `rcpt` with `status=...`."""
    def find():
        for line in t.log_text().splitlines():
            if f"to=<{rcpt}>" in line and f"status={status}" in line:
                return line
        return None
    return wait_for(find, timeout=20, what=f"status={status} for {rcpt}")


def mailq_line(t, rcpt, timeout=5.0):
    """The recipient's mailq line once the attempt's state is written: the
    log line comes first, the state file just after it (until then mailq
    says "(pending)")."""
    deadline = time.monotonic() + timeout
    while True:
        out = t.cmd("mailq").stdout.decode()
        line = next((l.strip() for l in out.splitlines() if rcpt in l), out)
        if not line.endswith("(pending)") or time.monotonic() > deadline:
            return line
        time.sleep(0.05)


def bounce_for(t, user):
    msgs = wait_for(lambda: t.maildir(user), timeout=20, what=f"bounce in {user}'s mailbox")
    return email.message_from_bytes(msgs[0])


def bounce_parts(b):
    human = b.get_payload()[0].get_payload(decode=True).decode()
    status = b.get_payload()[1].as_string()
    return human, status


def test_connection_refused(tern_factory):
    port = free_port()
    t = tern_factory(smarthost=f"127.0.0.1:{port}", smarthost_tls="none").start()
    send(t, "owner@localhost", ["u@far.test"])
    line = outcome_line(t, "u@far.test", "deferred")
    sentence = f"451 4.4.1 cannot connect to 127.0.0.1:{port}: connection refused"
    assert "relay=none dsn=4.4.1 status=deferred" in line, line
    assert f"({sentence})" in line, line
    assert "said:" not in line and "os error" not in line, line
    assert mailq_line(t, "u@far.test") == f"u@far.test (deferred: {sentence})"
    show = t.cmd("queue", "show", t.queued()[0]).stdout.decode()
    assert f"recipient: u@far.test (for u@far.test) deferred {sentence}" in show, show


def test_dns_servfail(tern_factory):
    dns = FakeDns({}, servfail=["far.test"])
    try:
        t = tern_factory(dns_servers=dns.addr).start()
        send(t, "owner@localhost", ["u@far.test"])
        line = outcome_line(t, "u@far.test", "deferred")
        sentence = f"451 4.4.3 DNS lookup for far.test failed: SERVFAIL from {dns.addr}"
        assert "relay=none dsn=4.4.3 status=deferred" in line, line
        assert sentence in line, line
        q = mailq_line(t, "u@far.test")
        assert q == f"u@far.test (deferred: {sentence})", q
        for text in (line, q):
            assert "Temporary(" not in text and "said:" not in text, text
    finally:
        dns.close()


def test_unknown_ca(tern_factory):
    """The smarthost's certificate is signed by a CA not in tls_ca_file: this
    was reported as `451 4.4.2 connection lost`."""
    sink = Sink(tls=server_ctx())
    try:
        t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls",
                         tls_ca_file=CERTS / "other-ca.pem").start()
        send(t, "owner@localhost", ["u@far.test"])
        line = outcome_line(t, "u@far.test", "deferred")
        sentence = (f"451 4.7.5 TLS with localhost[127.0.0.1]:{sink.port} failed: "
                    "certificate verify failed: unknown issuer")
        assert "relay=none dsn=4.7.5 status=deferred" in line, line
        assert f"({sentence})" in line, line
        assert "said:" not in line and "connection lost" not in line, line
        assert mailq_line(t, "u@far.test") == f"u@far.test (deferred: {sentence})"
        assert sink.messages == []
    finally:
        sink.close()


def test_wrong_tls_mode(tern_factory):
    """smarthost_tls = tls to a server that greets in plaintext."""
    sink = Sink()
    try:
        t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="tls",
                         tls_ca_file=CERTS / "ca.pem").start()
        send(t, "owner@localhost", ["u@far.test"])
        line = outcome_line(t, "u@far.test", "deferred")
        sentence = (f"451 4.7.5 TLS mode mismatch with localhost[127.0.0.1]:{sink.port}: "
                    "the server speaks plain SMTP first; set smarthost_tls = starttls")
        assert "relay=none dsn=4.7.5 status=deferred" in line, line
        assert f"({sentence})" in line, line
        assert "said:" not in line, line
        assert mailq_line(t, "u@far.test") == f"u@far.test (deferred: {sentence})"
    finally:
        sink.close()


def test_auth_rejected(tern_factory, tmp_path):
    """The server refused the password: its own reply, so "said:"."""
    sink = Sink(tls=server_ctx(), auth=("u", "right"))
    pw = tmp_path / "smarthost.pw"
    pw.write_text("wrong\n")
    pw.chmod(0o600)
    try:
        t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls",
                         tls_ca_file=CERTS / "ca.pem", smarthost_user="u",
                         smarthost_password_file=pw).start()
        send(t, "owner@localhost", ["u@far.test"])
        line = outcome_line(t, "u@far.test", "deferred")
        relay = f"localhost[127.0.0.1]:{sink.port}"
        sentence = f"{relay} said: 535 5.7.8 bad credentials"
        assert f"relay={relay} dsn=5.7.8 status=deferred ({sentence})" in line, line
        assert mailq_line(t, "u@far.test") == f"u@far.test (deferred: {sentence})"
        assert t.maildir("owner") == [], "a wrong password never bounces"
    finally:
        sink.close()


def test_expiry(tern_factory):
    """The queue gives up: Action failed with a permanent 5.4.7 (was 4.4.7),
    the last error in words, no Remote-MTA or Diagnostic-Code (tern decided)."""
    port = free_port()
    t = tern_factory(smarthost=f"127.0.0.1:{port}", smarthost_tls="none",
                     retry_schedule="1s", max_queue_time="3s").start()
    send(t, "owner@localhost", ["u@far.test"])
    last = f"451 4.4.1 cannot connect to 127.0.0.1:{port}: connection refused"
    outcome_line(t, "u@far.test", "deferred")
    q = wait_for(lambda: (lambda l: l if "deferred" in l else None)(mailq_line(t, "u@far.test")),
                 what="deferred in mailq")
    assert q == f"u@far.test (deferred: {last})", q
    line = outcome_line(t, "u@far.test", "bounced")
    assert "relay=none dsn=5.4.7 status=bounced" in line, line
    assert re.search(r"\(554 5\.4\.7 message expired after \d+s in the queue; last error: "
                     + re.escape(last) + r"\)", line), line
    human, status = bounce_parts(bounce_for(t, "owner"))
    assert "Final-Recipient: rfc822; u@far.test" in status, status
    assert "Action: failed" in status and "Status: 5.4.7" in status, status
    assert "Remote-MTA" not in status and "Diagnostic-Code" not in status, status
    assert re.search(r"<u@far\.test>: 554 5\.4\.7 message expired after \d+s in the queue; "
                     r"last error: " + re.escape(last), human), human
    assert "said:" not in human
    wait_for(lambda: "u@far.test" not in t.cmd("mailq").stdout.decode(),
             what="expired message gone from mailq")


def test_server_refusal_bounce_names_the_server(tern_factory):
    """A server's own 5xx: Remote-MTA, Diagnostic-Code and "said:"."""
    sink = Sink({"rcpt": "550 5.1.1 no such user"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send(t, "owner@localhost", ["gone@far.test"])
        relay = f"127.0.0.1[127.0.0.1]:{sink.port}"
        line = outcome_line(t, "gone@far.test", "bounced")
        assert (f"relay={relay} dsn=5.1.1 status=bounced "
                f"({relay} said: 550 5.1.1 no such user)") in line, line
        human, status = bounce_parts(bounce_for(t, "owner"))
        assert "Status: 5.1.1" in status and "Remote-MTA: dns; 127.0.0.1" in status, status
        assert "Diagnostic-Code: smtp; 550 5.1.1 no such user" in status, status
        assert f"<gone@far.test>: {relay} said: 550 5.1.1 no such user" in human, human
    finally:
        sink.close()


def test_starttls_to_the_implicit_tls_port(tern_factory):
    """smarthost_tls = starttls (the default) to port 465: the server waits
    for a TLS hello and never greets; the timeout says what is wrong."""
    import socket
    import threading

    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        lsock.bind(("127.0.0.1", 465))
    except OSError as e:
        lsock.close()
        pytest.skip(f"cannot listen on port 465: {e}")
    lsock.listen(4)
    held = []

    def accept():
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            held.append(c)  # silent: an implicit-TLS server waits for the hello

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        t = tern_factory(smarthost="localhost:465", smarthost_tls="starttls",
                         tls_ca_file=CERTS / "ca.pem", client_timeout="2s").start()
        send(t, "owner@localhost", ["u@far.test"])
        line = outcome_line(t, "u@far.test", "deferred")
        sentence = ("451 4.7.5 TLS mode mismatch with localhost[127.0.0.1]:465: "
                    "port 465 speaks implicit TLS; set smarthost_tls = tls")
        assert "relay=none dsn=4.7.5 status=deferred" in line, line
        assert f"({sentence})" in line, line
        assert mailq_line(t, "u@far.test") == f"u@far.test (deferred: {sentence})"
    finally:
        # Not lsock.close() under the blocked accept: see close_served.
        close_served(lsock, th)
        for c in held:
            c.close()


def test_old_state_file_reads_as_reasons_and_is_rewritten(tern_factory):
    """A state file from before typed reasons (one reply string per
    recipient) loads: the string is parsed once into a reason, and the next
    save writes the field-by-field layout."""
    sink = Sink({"rcpt": "451 4.2.0 still busy"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         hold_outbound="yes").start()
        send(t, "owner@localhost", ["u@far.test"])
        qid = wait_for(lambda: t.queued(), what="queued")[0]
        t.stop()
        state = t.spool / "state" / qid
        state.write_text("attempts 2\n0 deferred old.mx[192.0.2.1]:25 said: 451 4.3.0 try later\n")
        assert mailq_line(t, "u@far.test") == \
            "u@far.test (deferred: old.mx[192.0.2.1]:25 said: 451 4.3.0 try later)"
        # The next attempt saves the new layout with the new reason.
        t.settings["hold_outbound"] = "no"
        t.write_config()
        t.start()
        relay = f"127.0.0.1[127.0.0.1]:{sink.port}"
        wait_for(lambda: "tern-state 2" in state.read_text(), what="state rewritten")
        text = state.read_text()
        assert f"\n0 deferred remote {relay} 451 4.2.0 still busy\n" in text, text
        assert mailq_line(t, "u@far.test") == f"u@far.test (deferred: {relay} said: 451 4.2.0 still busy)"
    finally:
        sink.close()
