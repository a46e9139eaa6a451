"""Issue 11, items 6 and 9: the clock steps (a router before NTP) and
8BITMIME on the way out. Every peer is on 127.0.0.1."""

import glob
import os
import shutil
import smtplib
import time
from contextlib import contextmanager

from harness import Sink, wait_for


def send(t, sender, rcpts, body=b"Subject: test\r\n\r\nhello world\r\n", **kw):
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail(sender, rcpts, body, **kw)


# --- item 6: clock steps ---------------------------------------------------


def libfaketime():
    """The libfaketime preload library (Debian package `faketime`)."""
    assert shutil.which("faketime"), "faketime is not installed (apt-get install faketime)"
    libs = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    assert libs, "libfaketime.so.1 not found (apt-get install faketime)"
    return libs[0]


@contextmanager
def wall_clock_at(stamp):
    """Processes started inside see the wall clock at `stamp` (running on
    from there); the monotonic clock stays real, as when NTP steps a clock."""
    env = {
        "LD_PRELOAD": libfaketime(),
        "FAKETIME": "@" + stamp,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def queue_id_second(qid):
    """The arrival second encoded in a queue ID (the top 40 bits)."""
    return int(qid, 16) >> 24


def held_under_clock(tern_factory, sink, stamp, year):
    """Accepts a message for a remote recipient while tern's wall clock says
    `stamp` and hold_outbound = yes, stops, and restarts tern with the real
    clock and the hold lifted. Returns the restarted daemon."""
    t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                     hold_outbound="yes", retry_schedule="1s")
    with wall_clock_at(stamp):
        t.start()
    send(t, "owner@localhost", ["x@far.test"])
    wait_for(lambda: t.queued(), what="message queued")
    (qid,) = t.queued()
    # The fake clock really reached the daemon: the ID carries its arrival.
    assert time.gmtime(queue_id_second(qid)).tm_year == year, qid
    assert "held" in t.cmd("mailq").stdout.decode()
    assert t.stop() == 0
    t.settings["hold_outbound"] = "no"
    t.write_config()
    return t.start()


def test_mail_held_under_a_stale_clock_is_retried_not_bounced_after_ntp(tern_factory):
    """A router boots in 2020, holds mail, NTP sets the clock to today and
    the hold is lifted: the next hop defers, so the message must be retried
    (it waited seconds, not years). The first version bounced it
    "expired after 1 attempt(s)" at once."""
    attempts = []

    def rcpt(txn, addr):
        attempts.append(time.time())
        return "451 4.3.0 try later"

    sink = Sink({"rcpt": rcpt})
    try:
        t = held_under_clock(tern_factory, sink, "2020-01-01 00:00:00", 2020)
        wait_for(lambda: len(attempts) >= 3, timeout=20, what="three deferred attempts")
        log = t.log_text()
        assert "expired" not in log, log
        assert "non-delivery" not in log, log
        assert not t.maildir("owner"), "a bounce was sent"
        assert len(t.queued()) == 1
        assert "451 4.3.0 try later" in t.cmd("mailq").stdout.decode()
    finally:
        sink.close()


def test_mail_that_arrived_in_the_future_is_retried_within_the_schedule(tern_factory):
    """The clock stepped backwards (a board that booted with a wrong RTC
    year accepted mail, then NTP corrected it): retries must keep to the
    schedule (1 s here), not wait for the arrival time plus the schedule
    (the first version parked the message until 2035)."""
    attempts = []

    def rcpt(txn, addr):
        attempts.append(time.time())
        return "451 4.3.0 try later"

    sink = Sink({"rcpt": rcpt})
    try:
        t = held_under_clock(tern_factory, sink, "2035-06-01 00:00:00", 2035)
        wait_for(lambda: len(attempts) >= 3, timeout=20, what="three deferred attempts")
        assert "expired" not in t.log_text()
        assert not t.maildir("owner")
    finally:
        sink.close()


def test_queue_age_survives_a_restart_and_expires_after_an_attempt(tern_factory):
    """Queue age is monotonic time accumulated in the state file: time
    queued before a restart still counts, and once it passes max_queue_time
    the next real attempt bounces the message (4.4.7)."""
    sink = Sink({"rcpt": "451 4.3.0 try later"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         retry_schedule="1s", max_queue_time="6s").start()
        send(t, "owner@localhost", ["x@far.test"])
        (qid,) = wait_for(lambda: t.queued(), what="queued")
        state = t.spool / "state" / qid
        wait_for(lambda: state.exists() and "age 3" in state.read_text(), timeout=15,
                 what="age 3 s saved")
        assert t.stop() == 0
        age_before = int(state.read_text().split("age ")[1].split()[0])
        assert 3 <= age_before < 6, state.read_text()
        # A daemon that counted from zero again would need 6 s more.
        started = time.time()
        t.start()
        wait_for(lambda: t.maildir("owner"), timeout=15, what="expiry bounce")
        assert time.time() - started < 5.5
        assert b"4.4.7" in t.maildir("owner")[0]
        wait_for(lambda: not t.queued(), what="expired message removed")
    finally:
        sink.close()


# --- item 9: 8BITMIME on the way out ---------------------------------------

import email  # noqa: E402
import email.policy  # noqa: E402

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
        assert "cannot be converted to 7bit" in ds, ds
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
