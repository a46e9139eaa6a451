"""REQUIRETLS (RFC 8689; issue 15 part 6b) against the real binary: Python's
smtplib as the client over STARTTLS (`mail_options=["REQUIRETLS"]`), loopback
sinks as next hops, certificates from tests/certs (see test_tls.py)."""

import smtplib

import pytest

from harness import FakeDns, Sink, wait_for
from test_outbound import bounce_for
from test_tls import CERTS, client_ctx, server_ctx

BODY = b"Subject: payroll\r\n\r\nfor your eyes only\r\n"


@pytest.fixture
def tls_factory(tern_factory):
    def make(**overrides):
        settings = {"tls_cert": CERTS / "server.pem", "tls_key": CERTS / "server.key",
                    "tls_ca_file": CERTS / "ca.pem"}
        settings.update(overrides)
        return tern_factory(**settings).start()
    return make


def send_requiretls(t, sender, rcpts, body=BODY):
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.ehlo("client.test")
        assert not c.has_extn("requiretls"), c.esmtp_features
        c.starttls(context=client_ctx())
        c.ehlo("client.test")
        assert c.has_extn("requiretls"), c.esmtp_features
        assert c.sendmail(sender, rcpts, body, mail_options=["REQUIRETLS"]) == {}


def mail_commands(sink):
    return [c for c in sink.commands if c.upper().startswith("MAIL FROM:")]


def assert_bounced_5730(t, sink, why):
    b = bounce_for(t, "owner")
    ds = [p for p in b.walk() if p.get_content_type() == "message/delivery-status"]
    assert ds, b.as_string()[:2000]
    text = ds[0].as_string()
    assert "Action: failed" in text and "Status: 5.7.30" in text, text
    human = [p for p in b.walk() if p.get_content_type() == "text/plain"][0]
    said = human.get_payload(decode=True).decode()
    assert "REQUIRETLS support required" in said and why in said, said
    if sink is not None:
        assert not sink.messages
        assert not mail_commands(sink), sink.commands
    wait_for(lambda: not t.queued(), what="queue empty")


def test_requiretls_offered_only_under_tls_and_refused_in_plaintext(tls_factory):
    t = tls_factory()
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.ehlo("client.test")
        assert c.has_extn("starttls") and not c.has_extn("requiretls")
        code, text = c.docmd("MAIL FROM:<a@lan.test> REQUIRETLS")
        assert (code, text[:6]) == (530, b"5.7.10"), (code, text)
        # The session goes on: the same sender without it is fine.
        code, _ = c.docmd("MAIL FROM:<a@lan.test>")
        assert code == 250
        c.rset()
        c.starttls(context=client_ctx())
        c.ehlo("client.test")
        assert c.has_extn("requiretls")
        code, _ = c.docmd("MAIL FROM:<a@lan.test> REQUIRETLS")
        assert code == 250


def test_relayed_to_verified_tls_smarthost_offering_requiretls(tls_factory):
    sink = Sink(tls=server_ctx(), extensions=("PIPELINING", "8BITMIME", "SIZE 100000000", "REQUIRETLS"))
    try:
        t = tls_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls")
        send_requiretls(t, "owner@localhost", ["boss@far.test"])
        wait_for(lambda: sink.messages, what="relayed over TLS")
        m = sink.messages[0]
        assert m["tls"] and m["rcpts"] == ["boss@far.test"]
        assert m["data"].endswith(BODY)
        mail = mail_commands(sink)
        assert mail[-1].endswith(" REQUIRETLS"), mail
        # STARTTLS came before MAIL in the sink's session.
        assert sink.commands.index("STARTTLS") < sink.commands.index(mail[-1])
        wait_for(lambda: not t.queued(), what="queue empty")
    finally:
        sink.close()


def test_ordinary_mail_to_the_same_smarthost_has_no_parameter(tls_factory):
    sink = Sink(tls=server_ctx(), extensions=("PIPELINING", "SIZE 100000000", "REQUIRETLS"))
    try:
        t = tls_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls")
        with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
            c.sendmail("a@lan.test", ["b@far.test"], BODY)
        wait_for(lambda: sink.messages, what="relayed")
        assert "REQUIRETLS" not in mail_commands(sink)[-1].upper()
    finally:
        sink.close()


def test_smarthost_without_requiretls_bounces_5730_and_gets_nothing(tls_factory):
    sink = Sink(tls=server_ctx())  # STARTTLS, but no REQUIRETLS
    try:
        t = tls_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls")
        send_requiretls(t, "owner@localhost", ["boss@far.test"])
        assert_bounced_5730(t, sink, "does not offer REQUIRETLS")
        assert "STARTTLS" in sink.commands  # it got as far as verified TLS
    finally:
        sink.close()


def test_plain_smarthost_bounces_5730_without_connecting(tls_factory):
    sink = Sink(extensions=("PIPELINING", "SIZE 100000000", "REQUIRETLS"))
    try:
        t = tls_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none")
        send_requiretls(t, "owner@localhost", ["boss@far.test"])
        assert_bounced_5730(t, sink, "configured without TLS")
        assert sink.sessions == 0
    finally:
        sink.close()


def test_unverifiable_smarthost_certificate_bounces_5730(tls_factory):
    sink = Sink(tls=server_ctx(), extensions=("PIPELINING", "SIZE 100000000", "REQUIRETLS"))
    try:
        t = tls_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls",
                        tls_ca_file=CERTS / "other-ca.pem")
        send_requiretls(t, "owner@localhost", ["boss@far.test"])
        assert_bounced_5730(t, sink, "TLS with")
    finally:
        sink.close()


def test_mx_destination_bounces_5730_unvalidated(tls_factory):
    sink = Sink(tls=server_ctx(), extensions=("PIPELINING", "SIZE 100000000", "REQUIRETLS"))
    dns = FakeDns({("far.test", "MX"): [(10, "localhost")], ("localhost", "A"): ["127.0.0.1"]})
    try:
        t = tls_factory(dns_servers=dns.addr, mx_port=sink.port, outbound_tls="required")
        send_requiretls(t, "owner@localhost", ["boss@far.test"])
        assert_bounced_5730(t, sink, "not DNSSEC- or MTA-STS-validated")
        assert sink.sessions == 0
    finally:
        sink.close()
        dns.close()


def test_bounce_of_a_requiretls_message_is_relayed_with_requiretls(tls_factory):
    """The report returns the message's header section: it goes out under
    the same rule, here through the REQUIRETLS smarthost that refused the
    recipient."""
    def rcpt(txn, addr):
        return "550 5.1.1 no such user" if addr == "boss@far.test" else "250 2.1.5 ok"

    sink = Sink({"rcpt": rcpt}, tls=server_ctx(),
                extensions=("PIPELINING", "SIZE 100000000", "REQUIRETLS"))
    try:
        t = tls_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls")
        send_requiretls(t, "alice@remote.test", ["boss@far.test"])
        wait_for(lambda: sink.messages, what="the bounce relayed")
        m = sink.messages[0]
        assert m["sender"] in ("", None) and m["rcpts"] == ["alice@remote.test"], m
        assert b"Status: 5.1.1" in m["data"] and m["tls"]
        bounce_mail = [c for c in mail_commands(sink) if c.upper().startswith("MAIL FROM:<>")]
        assert bounce_mail and bounce_mail[-1].endswith(" REQUIRETLS"), sink.commands
    finally:
        sink.close()


def test_webhook_route_fails_requiretls_mail_with_5730(tern_factory):
    from test_routes import with_routes
    from test_webhook import Hook

    hook = Hook()
    try:
        t = with_routes(tern_factory, f"@hook.example webhook:{hook.url} format=ntfy\n",
                        tls_cert=CERTS / "server.pem", tls_key=CERTS / "server.key",
                        tls_ca_file=CERTS / "ca.pem").start()
        send_requiretls(t, "owner@localhost", ["alerts@hook.example"])
        assert_bounced_5730(t, None, "cannot relay with REQUIRETLS")
        assert hook.requests == []
    finally:
        hook.close()
