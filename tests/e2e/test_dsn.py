"""DSN (RFC 3461; issue 15 part 3) against the real binary, with Python's
smtplib as the client and scripted sinks as next hops: the parameters are
accepted, relayed to a hop that offers DSN, and honoured in tern's own
reports (failure: Original-Envelope-Id, Original-Recipient, NOTIFY=NEVER;
success: `relayed` to a hop without DSN)."""

import email
import smtplib
import time


from harness import Sink, wait_for
from test_outbound import bounce_for

BODY = b"Subject: dsn test\r\nFrom: owner@localhost\r\n\r\nhello dsn\r\n"


def send(t, sender, rcpts, mail_options=(), rcpt_options=()):
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.ehlo("client.test")
        assert c.has_extn("dsn"), c.esmtp_features
        refused = c.sendmail(sender, rcpts, BODY, mail_options=list(mail_options),
                             rcpt_options=list(rcpt_options))
        assert refused == {}


def delivery_status(msg):
    ds = [p for p in msg.walk() if p.get_content_type() == "message/delivery-status"]
    assert ds, msg.as_string()[:2000]
    # The parts of a message/delivery-status are the field groups.
    return ds[0].as_string()


def test_dsn_parameters_are_relayed_to_a_hop_that_offers_dsn(tern_factory):
    sink = Sink(extensions=("PIPELINING", "8BITMIME", "SIZE 100000000", "DSN"))
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send(t, "owner@localhost", ["x@far.test"], mail_options=["RET=HDRS", "ENVID=abc"],
             rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;x@y"])
        wait_for(lambda: sink.messages, what="relayed")
        mail = [c for c in sink.commands if c.upper().startswith("MAIL FROM:")]
        rcpt = [c for c in sink.commands if c.upper().startswith("RCPT TO:")]
        assert mail[-1] == "MAIL FROM:<owner@localhost> SIZE=%s RET=HDRS ENVID=abc" % \
            mail[-1].split("SIZE=")[1].split()[0], mail
        assert rcpt == ["RCPT TO:<x@far.test> NOTIFY=FAILURE ORCPT=rfc822;x@y"], rcpt
        wait_for(lambda: not t.queued(), what="queue empty")
        # The hop reports success itself: no report from tern.
        time.sleep(1)
        assert not t.maildir("owner")
    finally:
        sink.close()


def test_no_dsn_parameters_to_a_hop_without_dsn(tern_factory):
    sink = Sink()
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send(t, "owner@localhost", ["x@far.test"], mail_options=["RET=FULL", "ENVID=abc"],
             rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;x@y"])
        wait_for(lambda: sink.messages, what="relayed")
        assert not [c for c in sink.commands if "NOTIFY" in c or "ENVID" in c], sink.commands
    finally:
        sink.close()


def test_bounce_carries_envid_and_original_recipient(tern_factory):
    sink = Sink({"rcpt": "550 5.1.1 no such user"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send(t, "owner@localhost", ["x@far.test"], mail_options=["RET=HDRS", "ENVID=abc+2Bd"],
             rcpt_options=["NOTIFY=FAILURE", "ORCPT=rfc822;orig+2Bx@y.test"])
        b = bounce_for(t, "owner")
        text = delivery_status(b)
        assert "Original-Envelope-Id: abc+d" in text, text
        assert "Original-Recipient: rfc822;orig+x@y.test" in text, text
        assert "Final-Recipient: rfc822; x@far.test" in text, text
        assert "Action: failed" in text and "Status: 5.1.1" in text, text
        # RET=HDRS: the headers only.
        assert [p for p in b.walk() if p.get_content_type() == "text/rfc822-headers"]
        assert b"hello dsn" not in b.as_bytes()
    finally:
        sink.close()


def test_ret_full_returns_the_whole_message(tern_factory):
    sink = Sink({"rcpt": "550 5.1.1 no such user"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send(t, "owner@localhost", ["x@far.test"], mail_options=["RET=FULL"])
        b = bounce_for(t, "owner")
        full = [p for p in b.walk() if p.get_content_type() == "message/rfc822"]
        assert full, b.as_string()[:2000]
        assert b"hello dsn" in b.as_bytes()
    finally:
        sink.close()


def test_notify_never_gives_no_bounce(tern_factory):
    sink = Sink({"rcpt": "550 5.1.1 no such user"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send(t, "owner@localhost", ["x@far.test"], rcpt_options=["NOTIFY=NEVER"])
        wait_for(lambda: "status=bounced" in t.log_text(), what="the failure")
        wait_for(lambda: not t.queued(), what="queue empty")
        time.sleep(1)
        assert not t.maildir("owner"), t.log_text()
        assert "no failure notification asked for" in t.log_text()
    finally:
        sink.close()


def test_bad_dsn_parameters_are_501(tern_factory):
    t = tern_factory().start()
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.ehlo("client.test")
        code, text = c.docmd("MAIL FROM:<a@lan.test> RET=BODY")
        assert (code, text[:5]) == (501, b"5.5.4"), (code, text)
        code, _ = c.docmd("MAIL FROM:<a@lan.test> ENVID=x")
        assert code == 250
        code, text = c.docmd("RCPT TO:<owner@localhost> NOTIFY=NEVER,SUCCESS")
        assert (code, text[:5]) == (501, b"5.5.4"), (code, text)
        code, text = c.docmd("RCPT TO:<owner@localhost> ORCPT=x@y")
        assert (code, text[:5]) == (501, b"5.5.4"), (code, text)
        code, _ = c.docmd("RCPT TO:<owner@localhost> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;o@y")
        assert code == 250


def reports_in(t, user, action):
    """The reports in USER's mailbox whose status part has `Action: ACTION`."""
    out = []
    for raw in t.maildir(user):
        m = email.message_from_bytes(raw)
        if m.get_content_type() == "multipart/report" and f"Action: {action}" in delivery_status(m):
            out.append(m)
    return out


def test_notify_success_to_a_hop_without_dsn_gives_a_relayed_report(tern_factory):
    sink = Sink()
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send(t, "owner@localhost", ["x@far.test"], mail_options=["ENVID=e1"],
             rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;x@far.test"])
        wait_for(lambda: sink.messages, what="relayed")
        reports = wait_for(lambda: reports_in(t, "owner", "relayed"), what="relayed report")
        m = reports[0]
        assert m["Subject"] == "Successful Mail Delivery Report", m["Subject"]
        assert m["Auto-Submitted"] == "auto-replied"
        text = delivery_status(m)
        assert "Status: 2.0.0" in text, text
        assert "Original-Envelope-Id: e1" in text, text
        assert "Original-Recipient: rfc822;x@far.test" in text, text
        assert "Final-Recipient: rfc822; x@far.test" in text, text
        assert len(reports) == 1
    finally:
        sink.close()


def test_notify_success_to_a_dsn_hop_is_left_to_the_hop(tern_factory):
    sink = Sink(extensions=("PIPELINING", "8BITMIME", "SIZE 100000000", "DSN"))
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send(t, "owner@localhost", ["x@far.test"], rcpt_options=["NOTIFY=SUCCESS"])
        wait_for(lambda: sink.messages, what="relayed")
        assert [c for c in sink.commands if c.startswith("RCPT")] == \
            ["RCPT TO:<x@far.test> NOTIFY=SUCCESS"], sink.commands
        wait_for(lambda: not t.queued(), what="queue empty")
        time.sleep(1)
        assert not t.maildir("owner"), t.log_text()
    finally:
        sink.close()


def test_notify_success_for_local_delivery_gives_a_delivered_report(tern_factory):
    t = tern_factory().start()
    send(t, "owner@localhost", ["owner@localhost"], rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
    reports = wait_for(lambda: reports_in(t, "owner", "delivered"), what="delivered report")
    text = delivery_status(reports[0])
    assert "Status: 2.0.0" in text, text
    # The message itself arrived too, and without NOTIFY=SUCCESS no report.
    assert any(b"hello dsn" in m for m in t.maildir("owner"))
    send(t, "owner@localhost", ["owner@localhost"])
    wait_for(lambda: sum(b"hello dsn" in m for m in t.maildir("owner")) == 2, what="second")
    time.sleep(1)
    assert len(reports_in(t, "owner", "delivered")) == 1


def test_delay_warning_once_after_delay_warning_time(tern_factory):
    sink = Sink({"rcpt": "451 4.3.0 try later"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         retry_schedule="1s", delay_warning_time="2s").start()
        send(t, "owner@localhost", ["x@far.test"], mail_options=["ENVID=w1"])
        send(t, "owner@localhost", ["y@far.test"], rcpt_options=["NOTIFY=FAILURE"])
        reports = wait_for(lambda: reports_in(t, "owner", "delayed"), timeout=20,
                           what="delay warning")
        m = reports[0]
        assert m["Subject"] == "Delayed Mail (still being retried)", m["Subject"]
        text = delivery_status(m)
        assert "Final-Recipient: rfc822; x@far.test" in text, text
        assert "Original-Envelope-Id: w1" in text, text
        assert "Status: 4.3.0" in text, text
        # More attempts: still one warning, and none for NOTIFY without DELAY.
        wait_for(lambda: t.log_text().count("status=deferred") >= 8, timeout=20,
                 what="more attempts")
        assert len(reports_in(t, "owner", "delayed")) == 1, t.log_text()
        assert not any("y@far.test" in delivery_status(r) for r in reports_in(t, "owner", "delayed"))
    finally:
        sink.close()


def test_held_mail_gets_its_delay_warning_on_time(tern_factory):
    """Mail held by hold_outbound is looked at again when its delay warning
    is due, not at a fixed recheck (which was every 5 minutes)."""
    sink = Sink()
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         hold_outbound="yes", delay_warning_time="2s").start()
        send(t, "owner@localhost", ["x@far.test"], mail_options=["ENVID=h1"])
        reports = wait_for(lambda: reports_in(t, "owner", "delayed"), timeout=15,
                           what="delay warning of held mail")
        text = delivery_status(reports[0])
        assert "Final-Recipient: rfc822; x@far.test" in text, text
        assert "Original-Envelope-Id: h1" in text, text
        assert "Action: delayed" in text, text
        time.sleep(2)
        # Held: nothing was attempted, and the warning is sent once.
        assert sink.sessions == 0 and not sink.messages, sink.messages
        assert len(reports_in(t, "owner", "delayed")) == 1, t.log_text()
    finally:
        sink.close()


def test_no_delay_warning_by_default(tern_factory):
    sink = Sink({"rcpt": "451 4.3.0 try later"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         retry_schedule="1s").start()
        send(t, "owner@localhost", ["x@far.test"])
        wait_for(lambda: t.log_text().count("status=deferred") >= 4, timeout=20,
                 what="attempts")
        assert not t.maildir("owner"), t.log_text()
    finally:
        sink.close()
