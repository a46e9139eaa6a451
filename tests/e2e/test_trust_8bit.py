"""8BITMIME (issue 11, item 9): BODY=8BITMIME passed on to hops that offer
it, 8-bit text converted to quoted-printable for hops that do not, 5.6.3
where no conversion is possible."""

import email
import email.policy
import smtplib

from harness import Sink, wait_for


def send(t, sender, rcpts, body, **kw):
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail(sender, rcpts, body, **kw)

SEVEN_BIT_SINK = ("PIPELINING", "SIZE 100000000")  # no 8BITMIME, no SMTPUTF8

TEXT = "Grüße aus Köln = Ärger \nnaïve café, 日本語\n" + "é" * 450 + "\n"
HTML = "<p>crème brûlée</p>\n"


def mime_8bit_message():
    return (
        "From: owner@localhost\r\n"
        "To: x@far.test\r\n"
        "Subject: eight bit\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="==outer"\r\n'
        "\r\n"
        "This is a multi-part message in MIME format.\r\n"
        "--==outer\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        + TEXT.replace("\n", "\r\n")
        + "--==outer\r\n"
        'Content-Type: multipart/alternative; boundary="inner"\r\n'
        "\r\n"
        "--inner\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        + HTML.replace("\n", "\r\n")
        + "--inner--\r\n"
        "--==outer--\r\n"
    ).encode()


def recording_sink(extensions):
    mails = []

    def mail(txn, cmd):
        mails.append(cmd)
        return "250 2.1.0 ok"

    return Sink({"mail": mail}, extensions=extensions), mails


def test_8bit_message_is_relayed_with_body_8bitmime(tern_factory):
    sink, mails = recording_sink(("PIPELINING", "8BITMIME", "SIZE 100000000"))
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        msg = mime_8bit_message()
        send(t, "owner@localhost", ["x@far.test"], msg, mail_options=["BODY=8BITMIME"])
        wait_for(lambda: sink.messages, what="relayed")
        assert "BODY=8BITMIME" in mails[0], mails
        data = sink.messages[0]["data"]
        assert data.startswith(b"Received: ")
        assert data.endswith(msg), data[-300:]
    finally:
        sink.close()


def parsed_parts(data):
    m = email.message_from_bytes(data, policy=email.policy.default)
    return m, [p for p in m.walk() if not p.is_multipart()]


def assert_7bit(data):
    assert all(b < 0x80 for b in data), "8-bit octets sent to a 7-bit server"
    assert max(len(l) for l in data.split(b"\r\n")) <= 998


def test_8bit_message_is_converted_for_a_7bit_hop(tern_factory):
    sink, mails = recording_sink(SEVEN_BIT_SINK)
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send(t, "owner@localhost", ["x@far.test"], mime_8bit_message(),
             mail_options=["BODY=8BITMIME"])
        wait_for(lambda: sink.messages, what="relayed")
        assert "BODY=" not in mails[0], mails
        data = sink.messages[0]["data"]
        assert_7bit(data)
        m, parts = parsed_parts(data)
        assert m["Subject"] == "eight bit"
        assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
        for p, original in zip(parts, [TEXT, HTML]):
            assert p["Content-Transfer-Encoding"] == "quoted-printable"
            # The CRLF before a delimiter belongs to the delimiter.
            assert p.get_content().replace("\r\n", "\n") == original[:-1]
            assert all(len(l) <= 76 for l in p.get_payload().splitlines())
        assert b"Content-Transfer-Encoding: 8bit" not in data
        assert not t.maildir("owner"), "no bounce"
    finally:
        sink.close()


def test_8bit_cron_mail_without_mime_is_converted_for_a_7bit_hop(tern_factory):
    """sendmail input without MIME headers (cron output): the body becomes
    quoted-printable and the message gains MIME headers."""
    sink, mails = recording_sink(SEVEN_BIT_SINK)
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        body = "Température: 42 °C\n..line with dots\n".encode()
        r = t.cmd("sendmail", "-i", "x@far.test", input=b"Subject: cron\n\n" + body)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: sink.messages, what="relayed")
        data = sink.messages[0]["data"]
        assert_7bit(data)
        m = email.message_from_bytes(data)
        assert m["MIME-Version"] == "1.0"
        assert m["Content-Transfer-Encoding"] == "quoted-printable"
        assert m.get_content_charset() == "unknown-8bit"
        assert m.get_payload(decode=True) == body.replace(b"\n", b"\r\n")
    finally:
        sink.close()


def test_8bit_header_to_a_7bit_hop_bounces_with_5_6_3(tern_factory):
    sink, mails = recording_sink(SEVEN_BIT_SINK)
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        msg = "Subject: Grüße\r\nMIME-Version: 1.0\r\n\r\nhallo\r\n".encode()
        send(t, "owner@localhost", ["x@far.test"], msg, mail_options=["BODY=8BITMIME"])
        bounces = wait_for(lambda: t.maildir("owner"), timeout=15, what="bounce")
        b = email.message_from_bytes(bounces[0])
        ds = b.get_payload()[1].as_string()
        assert "Final-Recipient: rfc822; x@far.test" in ds, ds
        assert "Status: 5.6.3" in ds, ds
        # tern's own decision: explained in the human part, no Diagnostic-Code
        # (that field is for a server's reply).
        human = b.get_payload()[0].as_string()
        assert "cannot be converted to 7bit" in human, human
        wait_for(lambda: not t.queued(), what="failed message removed")
        assert sink.messages == [], "the message was sent anyway"
        assert "status=bounced" in t.log_text()
    finally:
        sink.close()


def test_bounce_returning_8bit_headers_is_converted_for_a_7bit_hop(tern_factory):
    """The 5.6.3 bounce returns the original (8-bit) header section; it goes
    to a remote sender through the same 7-bit hop, so it must be 8-bit
    aware too (its envelope said 7bit before)."""
    sink, mails = recording_sink(SEVEN_BIT_SINK)
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        msg = "Subject: Grüße\r\nMIME-Version: 1.0\r\n\r\nhallo\r\n".encode()
        send(t, "sender@remote.test", ["x@far.test"], msg, mail_options=["BODY=8BITMIME"])
        wait_for(lambda: sink.messages, timeout=15, what="bounce relayed")
        b = sink.messages[0]
        assert b["sender"] == "" and b["rcpts"] == ["sender@remote.test"], b
        assert_7bit(b["data"])
        m, parts = parsed_parts(b["data"])
        assert m.get_content_type() == "multipart/report"
        (returned,) = [p for p in parts if p.get_content_type() == "text/rfc822-headers"]
        assert returned["Content-Transfer-Encoding"] == "quoted-printable"
        assert "Subject: Grüße" in returned.get_payload(decode=True).decode()
        wait_for(lambda: not t.queued(), what="queue empty")
    finally:
        sink.close()
