"""SMTPUTF8 (RFC 6531/6532; issue 15 part 2) against the real binary, with
Python's smtplib as the client (it sends `MAIL ... SMTPUTF8` itself when
given `mail_options=["SMTPUTF8"]`) and scripted sinks as next hops."""

import email
import email.policy
import smtplib

import pytest

from harness import FakeDns, Sink, wait_for
from test_outbound import bounce_for

UTF8_BODY = "Subject: Grüße aus Köln\r\nFrom: Jörg <jörg@lan.test>\r\n\r\nHallo, schöne Grüße\r\n".encode()


def send_utf8(t, sender, rcpts, body=UTF8_BODY):
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.ehlo("client.test")
        assert c.has_extn("smtputf8"), c.esmtp_features
        refused = c.sendmail(sender, rcpts, body, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        assert refused == {}


@pytest.fixture
def utf8_sink():
    s = Sink(extensions=("PIPELINING", "8BITMIME", "SMTPUTF8", "SIZE 100000000"))
    yield s
    s.close()


def test_utf8_addresses_are_relayed_with_smtputf8(tern_factory, utf8_sink):
    t = tern_factory(smarthost=f"127.0.0.1:{utf8_sink.port}", smarthost_tls="none").start()
    send_utf8(t, "jörg@lan.test", ["用户@例子.test", "ann@far.test"])
    wait_for(lambda: utf8_sink.messages, what="relayed")
    m = utf8_sink.messages[0]
    assert m["sender"] == "jörg@lan.test"
    # The U-label domain travels as its A-label; the local part as UTF-8.
    assert sorted(m["rcpts"]) == ["ann@far.test", "用户@xn--fsqu00a.test"], m["rcpts"]
    mail = [c for c in utf8_sink.commands if c.upper().startswith("MAIL FROM:")]
    assert mail and mail[-1].endswith(" SMTPUTF8"), mail
    assert "BODY=8BITMIME" in mail[-1], mail
    assert m["data"].endswith(UTF8_BODY), m["data"][-200:]
    # RFC 6531 §3.7.3: the protocol type in the Received: field.
    assert b"with UTF8SMTP id " in m["data"], m["data"][:300]
    wait_for(lambda: not t.queued(), what="queue empty")


def test_non_ascii_path_without_smtputf8_is_553(tern_factory):
    t = tern_factory().start()
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.ehlo("client.test")
        c.command_encoding = "utf-8"
        code, text = c.docmd("MAIL FROM:<jörg@lan.test>")
        assert (code, text[:5]) == (553, b"5.6.7"), (code, text)
        code, _ = c.docmd("MAIL FROM:<a@lan.test>")
        assert code == 250
        code, text = c.docmd("RCPT TO:<x@bücher.test>")
        assert (code, text[:5]) == (553, b"5.6.7"), (code, text)
        code, _ = c.docmd("RCPT TO:<x@xn--bcher-kva.test>")
        assert code == 250


def test_hop_without_smtputf8_fails_the_recipient_with_5_6_7(tern_factory):
    sink = Sink(extensions=("PIPELINING", "8BITMIME", "SIZE 100000000"))
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send_utf8(t, "owner@localhost", ["jöe@far.test"])
        b = bounce_for(t, "owner")
        ds = [p for p in b.walk() if p.get_content_type() == "message/delivery-status"]
        assert ds, b.as_string()[:2000]
        text = ds[0].as_string()
        assert "Action: failed" in text and "Status: 5.6.7" in text, text
        # RFC 6533 §3: the UTF-8 address as utf-8-addr-xtext, the report ASCII.
        assert "Final-Recipient: utf-8; j\\x{F6}e@far.test" in text, text
        human = [p for p in b.walk() if p.get_content_type() == "text/plain"][0]
        said = human.get_payload(decode=True).decode()
        assert "SMTPUTF8 required but not offered" in said, said
        # Nothing was sent to the hop: no silent downgrade.
        assert not sink.messages
        assert not any(c.upper().startswith("RCPT") for c in sink.commands), sink.commands
    finally:
        sink.close()


def test_ascii_envelope_with_smtputf8_and_ascii_content_needs_no_smtputf8_hop(tern_factory):
    """The client said SMTPUTF8 but nothing in the message needs it: a
    hop without SMTPUTF8 gets it as plain ESMTP."""
    sink = Sink(extensions=("PIPELINING", "8BITMIME", "SIZE 100000000"))
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send_utf8(t, "a@lan.test", ["b@far.test"], b"Subject: plain\r\n\r\nascii only\r\n")
        wait_for(lambda: sink.messages, what="relayed")
        mail = [c for c in sink.commands if c.upper().startswith("MAIL FROM:")]
        assert "SMTPUTF8" not in mail[-1], mail
    finally:
        sink.close()


def test_u_label_and_a_label_domains_route_alike_and_mx_uses_the_a_label(tern_factory, utf8_sink):
    dns = FakeDns({
        ("xn--bcher-kva.test", "MX"): [(10, "mx.xn--bcher-kva.test")],
        ("mx.xn--bcher-kva.test", "A"): ["127.0.0.1"],
    })
    try:
        t = tern_factory(dns_servers=dns.addr, mx_port=utf8_sink.port).start()
        send_utf8(t, "a@lan.test", ["eins@bücher.test", "zwei@XN--BCHER-KVA.test"])
        wait_for(lambda: utf8_sink.messages, what="MX delivery")
        m = utf8_sink.messages[0]
        # One domain, one transaction, one MX lookup on the A-label.
        assert len(utf8_sink.messages) == 1
        assert sorted(m["rcpts"]) == ["eins@xn--bcher-kva.test", "zwei@xn--bcher-kva.test"]
        wait_for(lambda: not t.queued(), what="queue empty")
    finally:
        dns.close()


def test_local_domain_in_u_labels_and_utf8_alias(tern_factory):
    t = tern_factory(local_domains="localhost, mx.test, bücher.test")
    (t.dir / "aliases").write_text("Jörg: alice\n")
    t.start()
    send_utf8(t, "a@far.test", ["JÖRG@xn--bcher-kva.test"])
    msgs = wait_for(lambda: t.maildir("alice"), what="local delivery through the alias")
    msg = email.message_from_bytes(msgs[0], policy=email.policy.default)
    assert msg["Subject"] == "Grüße aus Köln"
    # No MIME charset in this message: compare the stored octets (Maildir
    # files have LF line ends).
    assert msgs[0].endswith("\n\nHallo, schöne Grüße\n".encode()), msgs[0][-100:]
    assert "\nDelivered-To: JÖRG@xn--bcher-kva.test\n" in msgs[0].decode()
    # A UTF-8 local part that is neither alias nor mailbox: 550, not a crash.
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.ehlo("client.test")
        c.command_encoding = "utf-8"
        assert c.docmd("MAIL FROM:<a@far.test> SMTPUTF8")[0] == 250
        code, text = c.docmd("RCPT TO:<ünbekannt@mx.test>")
        assert code == 550, (code, text)
        assert c.docmd("NOOP")[0] == 250
