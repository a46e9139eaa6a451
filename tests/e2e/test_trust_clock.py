"""Issue 11, items 6 and 9: the clock steps (a router before NTP) and
8BITMIME on the way out. Every peer is on 127.0.0.1."""

import smtplib
import time

from harness import Sink, faked_clock, queue_id_second, wait_for


def send(t, sender, rcpts, body=b"Subject: test\r\n\r\nhello world\r\n", **kw):
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail(sender, rcpts, body, **kw)


# --- item 6: clock steps ---------------------------------------------------


def wall_clock_at(stamp):
    """Processes started inside see the wall clock at `stamp` (running on
    from there)."""
    return faked_clock(FAKETIME="@" + stamp)


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
        attempts.append(time.monotonic())
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
        attempts.append(time.monotonic())
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
    the next real attempt bounces the message (5.4.7)."""
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
        started = time.monotonic()
        t.start()
        wait_for(lambda: t.maildir("owner"), timeout=15, what="expiry bounce")
        assert time.monotonic() - started < 5.5
        assert b"5.4.7" in t.maildir("owner")[0]
        wait_for(lambda: not t.queued(), what="expired message removed")
    finally:
        sink.close()
