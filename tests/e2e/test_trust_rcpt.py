"""Recipients are decided once, at receipt, into typed values (issue 11,
items 2, 7, 11, 12): no relay through a quoted local part, envelopes that
survive a restart, one copy per mailbox, one policy for SMTP and sendmail."""

import smtplib
import subprocess
import time

from harness import TERN_BIN, Sink, wait_for

# Relaying is allowed only for this network: the test client (127.0.0.1)
# is an outsider.
OUTSIDE = "192.0.2.0/24"


def rcpt(c, address):
    code, msg = c.docmd(f"RCPT TO:<{address}>")
    return code, msg.decode()


def test_quoted_local_part_does_not_open_a_relay(tern_factory):
    """80f8c34 relayed `"postmaster+victim@remote.example"@localhost` to
    postmaster+victim@remote.example for any client."""
    sink = Sink()
    try:
        for local_recipients in ("passwd", "any"):
            t = tern_factory(relay_networks=OUTSIDE, local_recipients=local_recipients,
                             smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none")
            (t.dir / "aliases").write_text("root: rootbox\n")
            t.start()
            with smtplib.SMTP("127.0.0.1", t.port) as c:
                c.ehlo("outsider.test")
                assert c.docmd("MAIL FROM:<spammer@outside.test>")[0] == 250
                # The plain relay attempt is refused, as before.
                assert rcpt(c, "victim@remote.example")[0] == 554
                accepted = []
                for a in ('"postmaster+victim@remote.example"@localhost',
                          '"root+x@remote.example"@localhost',
                          '"postmaster+victim@remote.example"@mx.test'):
                    code, _ = rcpt(c, a)
                    if code == 250:
                        accepted.append(a)
                # No `+` before the `@`: not a mailbox name at all.
                no_mailbox = rcpt(c, '"victim@remote.example"@localhost')
                if accepted:
                    assert c.docmd("DATA")[0] == 354
                    c.send(b"Subject: relay attempt\r\n\r\nspam\r\n.\r\n")
                    assert c.getreply()[0] == 250
            # Whatever was accepted went to the local postmaster (root's
            # alias), and nothing left the host.
            assert accepted, "postmaster+ext must be accepted (it is postmaster)"
            wait_for(lambda: t.maildir("rootbox") or sink.messages, what="a delivery")
            time.sleep(0.5)
            assert sink.messages == [], f"relayed: {sink.messages}"
            assert len(t.maildir("rootbox")) == 1
            assert "remote.example" not in "".join(
                line for line in t.log_text().splitlines() if "relay=127.0.0.1" in line)
            assert no_mailbox[0] == 550 and "5.1.3" in no_mailbox[1], no_mailbox
            t.stop()
    finally:
        sink.close()


def test_quoted_local_part_with_space_survives_a_deferral(tern_factory):
    """`"john doe"@example.com` became the local mailbox `"john` once the
    envelope was read back from the spool."""
    attempts = []

    def on_rcpt(txn, addr):
        attempts.append(addr)
        return "451 4.3.0 try again" if len(attempts) == 1 else "250 2.1.5 ok"

    sink = Sink(script={"rcpt": on_rcpt})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         retry_schedule="1s")
        t.start()
        with smtplib.SMTP("127.0.0.1", t.port) as c:
            c.sendmail("a@client.test", ['"john doe"@example.com'], b"Subject: q\r\n\r\nbody\r\n")
        wait_for(lambda: attempts, what="the first, deferred attempt")
        # A restart: the envelope now comes from the spool file.
        t.stop()
        t.start()
        wait_for(lambda: sink.messages, timeout=15, what="the retried delivery")
        assert sink.messages[0]["rcpts"] == ['"john doe"@example.com'], sink.messages
        assert t.maildir('"john') == [] and not (t.mail / '"john').exists()
    finally:
        sink.close()


def test_one_copy_per_mailbox_and_extension_reaches_alias(tern_factory):
    """100 recipients postmaster+1..100 wrote 100 copies; `+tag` and case
    variants bypassed the alias."""
    t = tern_factory(relay_networks=OUTSIDE, local_recipients="passwd", max_recipients=200)
    (t.dir / "aliases").write_text("root: admin\n")
    t.start()
    with smtplib.SMTP("127.0.0.1", t.port) as c:
        rcpts = [f"postmaster+{i}@localhost" for i in range(1, 101)]
        rcpts += ["PostMaster@localhost", "ROOT+cron@mx.test", "root@localhost"]
        refused = c.sendmail("a@client.test", rcpts, b"Subject: fan-out\r\n\r\nonce\r\n")
        assert refused == {}
    got = wait_for(lambda: t.maildir("admin"), what="delivery to root's alias target")
    time.sleep(0.5)
    assert len(t.maildir("admin")) == 1
    assert not (t.mail / "postmaster").exists() and not (t.mail / "root").exists()
    assert b"Delivered-To: postmaster+1@localhost" in got[0]


def test_sendmail_applies_the_smtp_recipient_policy(tern_factory):
    """A typo in a cron MAILTO created mail/nosuchuser/ silently; SMTP said
    550 5.1.1 for the same name. Now both refuse it: sendmail's drop gets a
    bounce to the sender, no mailbox is created."""
    t = tern_factory(local_recipients="passwd")
    (t.dir / "aliases").write_text("root: admin\n")
    t.start()
    with smtplib.SMTP("127.0.0.1", t.port) as c:
        c.ehlo("client.test")
        c.docmd("MAIL FROM:<a@client.test>")
        code, text = rcpt(c, "nosuchuser@localhost")
        assert code == 550 and "5.1.1" in text
    r = subprocess.run([TERN_BIN, "-c", str(t.conf), "sendmail", "-i", "nosuchuser", "root"],
                       input=b"Subject: cron\n\ncron output\n", capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    # root's copy arrives (through the alias), and so does the bounce for
    # the unknown user (the sender is root@mx.test, which is admin too).
    wait_for(lambda: len(t.maildir("admin")) >= 2, what="the message and the bounce")
    mails = t.maildir("admin")
    bounce = [m for m in mails if b"multipart/report" in m]
    assert len(bounce) == 1, mails
    assert b"Status: 5.1.1" in bounce[0]
    assert b"nosuchuser@mx.test" in bounce[0]
    assert not (t.mail / "nosuchuser").exists()
