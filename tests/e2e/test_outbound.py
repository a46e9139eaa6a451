"""Deliver to the world: smarthost, MX via the fake DNS server, retries,
bounces. Every peer is on 127.0.0.1; dns_servers always points at a
loopback server (FakeDns) or a closed loopback port."""

import email
import smtplib
import socket
import subprocess
import time

import pytest

from harness import FakeDns, Sink, free_port, wait_for


def send(t, sender, rcpts, body=b"Subject: test\r\n\r\nhello world\r\n"):
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail(sender, rcpts, body)


@pytest.fixture
def sink():
    s = Sink()
    yield s
    s.close()


def test_smarthost_relay(tern_factory, sink):
    t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
    body = b"Subject: relayed\r\n\r\n.dot line\r\n" + (b"y" * 70 + b"\r\n") * 300
    send(t, "cam@lan.test", ["a@far.test", "b@other.test"], body)
    wait_for(lambda: sink.messages, what="smarthost delivery")
    m = sink.messages[0]
    assert m["sender"] == "cam@lan.test"
    assert sorted(m["rcpts"]) == ["a@far.test", "b@other.test"]
    assert m["data"].endswith(body), m["data"][-100:]
    assert b"Received: from " in m["data"]
    wait_for(lambda: not t.queued(), what="queue empty")
    assert f"relay=127.0.0.1[127.0.0.1]:{sink.port}" in t.log_text()
    assert "status=sent" in t.log_text()


def test_fallback_smarthost(tern_factory, sink):
    dead = free_port()
    t = tern_factory(smarthost=f"127.0.0.1:{dead}, 127.0.0.1:{sink.port}", smarthost_tls="none").start()
    send(t, "a@lan.test", ["x@far.test"])
    wait_for(lambda: sink.messages, what="delivery via the second smarthost")


def test_mx_delivery_with_fake_dns(tern_factory, sink):
    dns = FakeDns({
        ("far.test", "MX"): [(10, "mx1.far.test"), (20, "mx2.far.test")],
        ("mx1.far.test", "A"): ["127.0.0.1"],
        ("mx2.far.test", "A"): ["127.0.0.1"],
    })
    try:
        t = tern_factory(dns_servers=dns.addr, mx_port=sink.port).start()
        send(t, "a@lan.test", ["u1@far.test", "u2@far.test"])
        wait_for(lambda: sink.messages, what="MX delivery")
        assert sorted(sink.messages[0]["rcpts"]) == ["u1@far.test", "u2@far.test"]
        assert ("far.test", "MX") in dns.queries
        wait_for(lambda: "relay=mx1.far.test[127.0.0.1]" in t.log_text(), what="the delivery logged")
    finally:
        dns.close()


def test_implicit_mx_from_a_record(tern_factory, sink):
    dns = FakeDns({("plain.test", "A"): ["127.0.0.1"]})
    try:
        t = tern_factory(dns_servers=dns.addr, mx_port=sink.port).start()
        send(t, "a@lan.test", ["u@plain.test"])
        wait_for(lambda: sink.messages, what="implicit MX delivery")
    finally:
        dns.close()


def bounce_for(t, user):
    msgs = wait_for(lambda: t.maildir(user), what=f"bounce in {user}'s mailbox")
    return email.message_from_bytes(msgs[0])


def test_retry_then_deliver_exactly_once(tern_factory):
    state = {"n": 0}

    def rcpt(txn, addr):
        state["n"] += 1
        return "451 4.3.0 try later" if state["n"] == 1 else "250 ok"

    sink = Sink({"rcpt": rcpt})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none", retry_schedule="1s").start()
        send(t, "a@lan.test", ["x@far.test"])
        wait_for(lambda: "status=deferred" in t.log_text(), what="first attempt deferred")
        # The state file is written just after the log line: wait for mailq
        # to show the reason (or for the retry to have delivered already).
        wait_for(lambda: "451 4.3.0 try later" in t.cmd("mailq").stdout.decode()
                 or not t.queued(), what="the reason in mailq")
        try:
            wait_for(lambda: sink.messages, timeout=15, what="retry delivered")
        except TimeoutError as e:
            raise AssertionError(f"{e}; the sink had {sink.sessions} session(s) and got "
                                 f"{sink.commands}") from e
        time.sleep(2.5)
        assert len(sink.messages) == 1
        assert not t.queued()
    finally:
        sink.close()


def test_permanent_failure_bounces_to_local_sender(tern_factory):
    sink = Sink({"rcpt": lambda txn, a: "550 5.1.1 no such user" if a.startswith("bad") else "250 ok"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send(t, "owner@localhost", ["bad@far.test", "good@far.test"],
             b"Subject: original subject\r\nMessage-ID: <orig@lan.test>\r\n\r\nbody\r\n")
        b = bounce_for(t, "owner")
        assert b.get_content_type() == "multipart/report"
        assert b.get_param("report-type") == "delivery-status"
        parts = b.get_payload()
        assert parts[0].get_content_type() == "text/plain"
        assert parts[1].get_content_type() == "message/delivery-status"
        ds = parts[1].as_string()
        assert "Final-Recipient: rfc822; bad@far.test" in ds
        assert "Action: failed" in ds and "Status: 5.1.1" in ds
        assert "Diagnostic-Code: smtp;" in ds and "550 5.1.1 no such user" in ds
        assert "Reporting-MTA: dns; mx.test" in ds and "Arrival-Date:" in ds
        assert "good@far.test" not in ds
        assert parts[2].get_content_type() == "text/rfc822-headers"
        assert "original subject" in parts[2].as_string()
        assert b["From"].startswith("MAILER-DAEMON@")
        wait_for(lambda: len(sink.messages) == 1, what="good recipient delivered")
        wait_for(lambda: not t.queued(), what="queue empty")
    finally:
        sink.close()


def test_null_mx_bounces_at_once(tern_factory):
    dns = FakeDns({("nullmx.test", "MX"): [(0, ".")]})
    try:
        t = tern_factory(dns_servers=dns.addr).start()
        send(t, "owner@localhost", ["x@nullmx.test"])
        b = bounce_for(t, "owner")
        ds = b.get_payload()[1].as_string()
        assert "Status: 5.1.10" in ds, ds
    finally:
        dns.close()


def test_dns_failure_is_reported_in_words_not_debug_text(tern_factory):
    """mailq and the log showed `Temporary("timeout waiting for ...")`."""
    t = tern_factory(dns_servers="127.0.0.1:1", dns_timeout="1s").start()
    send(t, "a@lan.test", ["u@far.test"])
    wait_for(lambda: "status=deferred" in t.log_text(), what="the deferral")
    # The state file is written just after the log line.
    q = wait_for(lambda: (lambda q: q if "(pending)" not in q else None)(t.cmd("mailq").stdout.decode()),
                 what="the reason in mailq")
    for text in (q, t.log_text()):
        assert "451 4.4.3 DNS lookup for far.test failed: timeout" in text, text
        assert "Temporary(" not in text


def test_refused_connection_is_a_deferral_with_a_temporary_code(tern_factory):
    """A refused connection was logged `dsn=5.0.0 status=deferred`."""
    t = tern_factory(smarthost=f"127.0.0.1:{free_port()}", smarthost_tls="none").start()
    send(t, "a@lan.test", ["u@far.test"])
    wait_for(lambda: "status=deferred" in t.log_text(), what="the deferral")
    line = next(l for l in t.log_text().splitlines() if "status=deferred" in l)
    assert "dsn=4.4.1" in line and "connection refused" in line, line


def test_expiry_bounces(tern_factory):
    sink = Sink({"rcpt": "451 4.3.0 later"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         retry_schedule="1s", max_queue_time="3s").start()
        send(t, "owner@localhost", ["x@far.test"])
        b = bounce_for(t, "owner")
        ds = b.get_payload()[1].as_string()
        assert "Final-Recipient: rfc822; x@far.test" in ds
        assert "expired" in b.get_payload()[0].as_string()
        # A failed action carries a permanent status (was 4.4.7).
        assert "Action: failed" in ds and "Status: 5.4.7" in ds, ds
        wait_for(lambda: not t.queued(), what="expired message removed")
    finally:
        sink.close()


def test_null_sender_failure_makes_no_new_message(tern_factory):
    sink = Sink({"rcpt": "550 5.1.1 nope"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send(t, "", ["x@far.test"])
        wait_for(lambda: "discarded without a bounce" in t.log_text(), what="drop log line")
        time.sleep(1.5)
        assert not t.queued()
        assert not (t.mail).exists() or not any(t.mail.iterdir())
    finally:
        sink.close()


def test_dns_not_answering_defers(tern_factory):
    dns = FakeDns({("far.test", "MX"): [(10, "mx.far.test")]}, silent=True)
    try:
        t = tern_factory(dns_servers=dns.addr, dns_timeout="1s").start()
        send(t, "owner@localhost", ["x@far.test"])
        wait_for(lambda: "status=deferred" in t.log_text(), timeout=20, what="deferral")
        assert t.queued()
        assert t.maildir("owner") == []
        assert "status=bounced" not in t.log_text()
    finally:
        dns.close()


def test_servfail_defers_and_nxdomain_bounces(tern_factory):
    dns = FakeDns({("exists.test", "A"): ["127.0.0.1"]}, servfail=["broken.test"])
    try:
        t = tern_factory(dns_servers=dns.addr).start()
        send(t, "owner@localhost", ["a@broken.test", "b@nosuch.test"])
        b = bounce_for(t, "owner")
        ds = b.get_payload()[1].as_string()
        assert "b@nosuch.test" in ds and "a@broken.test" not in ds
        q = wait_for(lambda: (lambda q: q if "deferred" in q else None)(t.cmd("mailq").stdout.decode()),
                     what="the deferral in mailq")
        assert "a@broken.test" in q and "deferred" in q, q
    finally:
        dns.close()


def test_interop_postfix_smtp_sink(tern_factory, tmp_path):
    port = free_port()
    dump = tmp_path / "sink"
    dump.mkdir()
    proc = subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "root", "-d", str(dump / "%M."), f"127.0.0.1:{port}", "10"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        t = tern_factory(smarthost=f"127.0.0.1:{port}", smarthost_tls="none").start()
        send(t, "a@lan.test", ["x@far.test"], b"Subject: to smtp-sink\r\n\r\npostfix interop body\r\n")
        files = wait_for(lambda: list(dump.iterdir()), what="smtp-sink dump file")
        data = wait_for(lambda: files[0].read_bytes() if b"postfix interop body" in files[0].read_bytes() else None,
                        what="complete dump")
        assert b"Subject: to smtp-sink" in data
        wait_for(lambda: "status=sent" in t.log_text(), what="sent log line")
    finally:
        proc.terminate()
        proc.wait()


def test_own_mx_entry_only_more_preferred_hosts(tern_factory, sink):
    # We (mx.test) are the backup MX at 20: the primary at 10 is the only candidate.
    dns = FakeDns({
        ("backup.test", "MX"): [(10, "primary.backup.test"), (20, "mx.test"), (30, "worse.backup.test")],
        ("primary.backup.test", "A"): ["127.0.0.1"],
        ("mx.test", "A"): ["127.0.0.2"],
        ("worse.backup.test", "A"): ["127.0.0.3"],
        ("self.test", "MX"): [(10, "mx.test")],
        ("mx.test", "MX"): [(10, "mx.test")],
    })
    try:
        t = tern_factory(dns_servers=dns.addr, mx_port=sink.port, local_domains="localhost").start()
        send(t, "owner@localhost", ["u@backup.test", "v@self.test"])
        wait_for(lambda: sink.messages, what="delivery to the primary")
        assert sink.messages[0]["rcpts"] == ["u@backup.test"]
        # The sink has the message before tern has read its 250 and logged.
        wait_for(lambda: "relay=primary.backup.test[127.0.0.1]" in t.log_text(),
                 what="the delivery logged")
        b = bounce_for(t, "owner")
        ds = b.get_payload()[1].as_string()
        assert "v@self.test" in ds and "5.4.6" in ds
        assert "loops back to myself" in b.get_payload()[0].as_string()
    finally:
        dns.close()


def test_outbound_connection_is_cached_and_reused(tern_factory, sink):
    t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
    send(t, "a@lan.test", ["one@far.test"])
    wait_for(lambda: len(sink.messages) == 1, what="first delivery")
    time.sleep(0.3)  # well inside the 2 s the idle session is kept
    send(t, "a@lan.test", ["two@far.test"])
    wait_for(lambda: len(sink.messages) == 2, what="second delivery")
    assert sink.sessions == 1, "the second message reused the cached session"
    # After the idle time the session is closed with QUIT; a later message opens a new one.
    time.sleep(3.5)
    send(t, "a@lan.test", ["three@far.test"])
    wait_for(lambda: len(sink.messages) == 3, what="third delivery")
    assert sink.sessions == 2


def test_outbound_connection_reuse_can_be_turned_off(tern_factory, sink):
    """outbound_connection_reuse = no: each message its own session, which
    says QUIT after its transaction (no 2 s idle wait)."""
    t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                     outbound_connection_reuse="no").start()
    send(t, "a@lan.test", ["one@far.test"])
    wait_for(lambda: len(sink.messages) == 1, what="first delivery")
    wait_for(lambda: any(c.upper().startswith("QUIT") for c in sink.commands), timeout=1.5,
             what="QUIT at once")
    send(t, "a@lan.test", ["two@far.test"])
    wait_for(lambda: len(sink.messages) == 2, what="second delivery")
    assert sink.sessions == 2, "a new session for the second message"
