"""Clock sanity (issue 14, part 6): a router that boots with its clock in
the past (no RTC, before NTP) sees every certificate as "not yet valid".
tern says the clock is wrong, in the log at start and in the deferral
reason, and defers: nothing bounces because of the clock."""

from harness import Sink, faked_clock
from test_outcomes import CERTS, mailq_line, outcome_line, send, server_ctx


def test_a_clock_before_the_build_defers_tls_and_names_the_clock(tern_factory):
    sink = Sink(tls=server_ctx())
    try:
        with faked_clock(FAKETIME="2020-01-01 00:00:00"):
            t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls",
                             tls_ca_file=CERTS / "ca.pem").start()
        log = t.log_text()
        assert "the system clock (2020-01-01) is before this tern was built" in log, log
        assert "TLS deliveries defer until it is" in log, log
        send(t, "owner@localhost", ["u@far.test"])
        line = outcome_line(t, "u@far.test", "deferred")
        assert "dsn=4.7.5 status=deferred" in line, line
        assert "certificate verify failed: certificate not valid before 2026-11-29" in line, line
        assert "(the system clock (2020-01-01) is before this tern was built" in line, line
        assert "set it (NTP)" in line, line
        assert "set it (NTP)" in mailq_line(t, "u@far.test")
        assert sink.messages == [] and t.maildir("owner") == [], "nothing sent, nothing bounced"
    finally:
        sink.close()


def test_a_right_clock_says_nothing_about_it(tern_factory):
    sink = Sink(tls=server_ctx())
    try:
        t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls",
                         tls_ca_file=CERTS / "ca.pem").start()
        send(t, "owner@localhost", ["u@far.test"])
        outcome_line(t, "u@far.test", "sent")
        assert "system clock" not in t.log_text()
    finally:
        sink.close()
