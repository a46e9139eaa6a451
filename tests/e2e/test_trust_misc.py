"""Smaller trust defects found while fixing issue 11's items."""

import smtplib

from harness import Sink, wait_for


def test_a_state_file_with_the_largest_attempt_count_is_no_panic(tern_factory):
    """`attempts 4294967295` in state/ID overflowed the attempt count (a
    panic in debug builds, the abort of every mail on the host in a build
    with overflow checks)."""
    sink = Sink()
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         hold_outbound="yes")
        t.start()
        with smtplib.SMTP("127.0.0.1", t.port) as c:
            c.sendmail("a@client.test", ["x@remote.test"], b"Subject: s\r\n\r\nbody\r\n")
        qid = wait_for(lambda: t.queued(), what="the held message")[0]
        t.stop()
        (t.spool / "state" / qid).write_text("attempts 4294967295\n0 deferred 451 4.3.0 later\n")
        t.settings["hold_outbound"] = "no"
        t.write_config()
        t.start()
        wait_for(lambda: sink.messages, what="the delivery")
        assert t.proc.poll() is None, t.log_text()
        assert "panicked" not in t.log_text()
    finally:
        sink.close()
