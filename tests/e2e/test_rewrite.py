"""Issue 14 part 1: sender rewriting (sender_address, sender_rewrite),
qualify_domain and the `*:` alias catch-all, against a smarthost sink
that enforces the sender it allows, as Microsoft 365 and Fastmail do."""

import email
import smtplib
import subprocess
import threading

import pytest

from harness import TERN_BIN, Sink, wait_for

ALLOWED = "me@example.com"


class Provider:
    """A smarthost that accepts only the senders in `allowed` (553 5.7.1
    otherwise) and records every MAIL FROM it was offered."""

    def __init__(self, allowed=(ALLOWED,)):
        self.allowed = set(allowed)
        self.offered = []
        self.lock = threading.Lock()

        def mail(txn, cmd):
            with self.lock:
                self.offered.append(txn["sender"])
            if txn["sender"] in self.allowed:
                return "250 2.1.0 ok"
            return "553 5.7.1 sender not owned by user"

        self.sink = Sink(script={"mail": mail})
        self.port = self.sink.port
        self.messages = self.sink.messages

    def close(self):
        self.sink.close()


@pytest.fixture
def provider():
    p = Provider()
    yield p
    p.close()


def router(tern_factory, provider, aliases="root: far@remote.test\n", **overrides):
    settings = dict(
        hostname="mx.test",
        local_domains="localhost, mx.test, router.lan",
        qualify_domain="router.lan",
        sender_address=ALLOWED,
        smarthost=f"127.0.0.1:{provider.port}",
        smarthost_tls="none",
    )
    settings.update(overrides)
    t = tern_factory(**settings)
    (t.dir / "aliases").write_text(aliases)
    return t


def sendmail(t, args, data):
    r = subprocess.run([TERN_BIN, "-c", str(t.conf), "sendmail", *args], input=data,
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r


CRON = b"From: Cron Daemon <root>\nTo: root\nCc: joe\nSubject: Cron <root@router> backup\n\nbackup done\nFrom: root\n"


def test_cron_mail_leaves_as_sender_address_and_local_copy_keeps_the_original(tern_factory, provider):
    t = router(tern_factory, provider).start()
    sendmail(t, ["-i", "root", "joe"], CRON)
    wait_for(lambda: provider.messages, what="delivery to the smarthost")
    m = provider.messages[0]
    assert provider.offered == [ALLOWED]
    assert (m["sender"], m["rcpts"]) == (ALLOWED, ["far@remote.test"])
    msg = email.message_from_bytes(m["data"])
    assert msg["From"] == "Cron Daemon <me@example.com>"
    # Bare names never leave unqualified; To/Cc are not rewritten.
    assert msg["To"] == "root@router.lan"
    assert msg["Cc"] == "joe@router.lan"
    # The body is not touched.
    assert m["data"].endswith(b"\r\nbackup done\r\nFrom: root\r\n"), m["data"]
    # The local copy keeps the original sender, envelope and header.
    local = wait_for(lambda: t.maildir("joe"), what="local delivery")[0]
    assert local.startswith(b"Return-Path: <root@router.lan>\n"), local[:200]
    lm = email.message_from_bytes(local)
    assert lm["From"] == "Cron Daemon <root@router.lan>"
    assert lm["To"] == "root@router.lan"
    wait_for(lambda: not t.queued(), what="queue empty")
    assert "sender_rewrite from=<root@router.lan> to=<me@example.com>" in t.log_text()


def test_without_rewriting_the_provider_refuses_the_sender(tern_factory, provider):
    t = router(tern_factory, provider, sender_address="").start()
    sendmail(t, ["-i", "root"], CRON)
    wait_for(lambda: provider.offered, what="an attempt at the smarthost")
    assert provider.offered[0] == "root@router.lan"
    wait_for(lambda: "sender not owned by user" in t.log_text(), what="the refusal logged")


def test_sender_rewrite_file_comes_before_sender_address(tern_factory):
    p = Provider(allowed=("cron@example.com", ALLOWED))
    try:
        t = router(tern_factory, p)
        rules = t.dir / "senders"
        rules.write_text("# who is who\n\nroot cron@example.com\n@elsewhere.test other@example.com\n")
        t.settings["sender_rewrite"] = str(rules)
        t.write_config()
        t.start()
        sendmail(t, ["-i", "far@remote.test"], b"From: root\nSubject: a\n\nx\n")
        sendmail(t, ["-i", "-f", "daemon", "far@remote.test"], b"Subject: b\n\ny\n")
        wait_for(lambda: len(p.messages) == 2, what="two deliveries")
        by_subject = {email.message_from_bytes(m["data"])["Subject"]: m for m in p.messages}
        a, b = by_subject["a"], by_subject["b"]
        assert a["sender"] == "cron@example.com"
        assert email.message_from_bytes(a["data"])["From"] == "cron@example.com"
        # No rule for daemon: sender_address.
        assert b["sender"] == ALLOWED
        assert email.message_from_bytes(b["data"])["From"] == ALLOWED
    finally:
        p.close()


def test_check_config_reports_a_bad_sender_rewrite_line(tern_factory, provider):
    t = router(tern_factory, provider)
    rules = t.dir / "senders"
    rules.write_text("root cron@example.com\nroot\n")
    t.settings["sender_rewrite"] = str(rules)
    t.write_config()
    r = subprocess.run([TERN_BIN, "-c", str(t.conf), "check-config"], capture_output=True, timeout=30)
    assert r.returncode != 0
    assert f"{rules}:2: expected `PATTERN ADDRESS`" in r.stderr.decode()
    rules.write_text("root cron@example.com\n")
    r = subprocess.run([TERN_BIN, "-c", str(t.conf), "check-config"], capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_sender_rewrite_is_reloaded_on_sighup(tern_factory):
    import signal

    p = Provider(allowed=("one@example.com", "two@example.com"))
    try:
        t = router(tern_factory, p, sender_address="")
        rules = t.dir / "senders"
        rules.write_text("* one@example.com\n")
        t.settings["sender_rewrite"] = str(rules)
        t.write_config()
        t.start()
        sendmail(t, ["-i", "far@remote.test"], b"Subject: 1\n\nx\n")
        wait_for(lambda: len(p.messages) == 1, what="first delivery")
        rules.write_text("* two@example.com\n")
        t.send(signal.SIGHUP)
        wait_for(lambda: t.log_text().count("configuration reloaded") >= 1, what="reload")
        sendmail(t, ["-i", "far@remote.test"], b"Subject: 2\n\nx\n")
        wait_for(lambda: len(p.messages) == 2, what="second delivery")
        assert [m["sender"] for m in p.messages] == ["one@example.com", "two@example.com"]
    finally:
        p.close()


def smtp_send(t, sender, rcpts, data):
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail(sender, rcpts, data)


def test_lan_client_with_a_local_sender_is_rewritten_and_a_foreign_one_is_not(tern_factory):
    p = Provider(allowed=(ALLOWED, "cam@gmail.test"))
    try:
        t = router(tern_factory, p).start()
        smtp_send(t, "nas@router.lan", ["far@remote.test"],
                  b"From: \"NAS, Box\" <nas@router.lan>\r\nSender: nas@router.lan\r\nSubject: nas\r\n\r\nraid ok\r\n")
        smtp_send(t, "cam@gmail.test", ["far@remote.test"],
                  b"From: Cam <cam@gmail.test>\r\nSubject: cam\r\n\r\nmotion\r\n")
        wait_for(lambda: len(p.messages) == 2, what="two deliveries")
        by_subject = {email.message_from_bytes(m["data"])["Subject"]: m for m in p.messages}
        nas, cam = by_subject["nas"], by_subject["cam"]
        assert nas["sender"] == ALLOWED
        nm = email.message_from_bytes(nas["data"])
        assert nm["From"] == "\"NAS, Box\" <me@example.com>"
        assert nm["Sender"] == ALLOWED
        assert cam["sender"] == "cam@gmail.test"
        assert email.message_from_bytes(cam["data"])["From"] == "Cam <cam@gmail.test>"
    finally:
        p.close()


def test_null_sender_mail_is_never_rewritten(tern_factory):
    p = Provider(allowed=(ALLOWED, ""))
    try:
        t = router(tern_factory, p).start()
        sendmail(t, ["-i", "-f", "", "far@remote.test"], b"Subject: dsn\n\nx\n")
        wait_for(lambda: p.messages, what="delivery")
        m = p.messages[0]
        assert p.offered == [""]
        assert email.message_from_bytes(m["data"])["From"] == "MAILER-DAEMON@mx.test"
    finally:
        p.close()


def test_catch_all_alias_takes_unknown_local_names_but_opens_no_relay(tern_factory, provider):
    t = router(tern_factory, provider, aliases="*: owner\n", local_recipients="passwd",
               relay_networks="192.0.2.0/24").start()
    smtp_send(t, "a@gmail.test", ["nosuch@mx.test"], b"Subject: caught\r\n\r\nx\r\n")
    got = wait_for(lambda: t.maildir("owner"), what="catch-all delivery")
    assert b"Subject: caught" in got[0]
    # root is a real account: it still wins over the catch-all.
    smtp_send(t, "a@gmail.test", ["root@mx.test"], b"Subject: for root\r\n\r\nx\r\n")
    wait_for(lambda: t.maildir("root"), what="delivery to root")
    # postmaster too (it goes where root goes).
    smtp_send(t, "a@gmail.test", ["postmaster@mx.test"], b"Subject: pm\r\n\r\nx\r\n")
    wait_for(lambda: len(t.maildir("root")) == 2, what="postmaster to root")
    assert len(t.maildir("owner")) == 1
    # Another domain is still refused to a client outside relay_networks.
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.ehlo("client.test")
        assert c.mail("a@gmail.test")[0] == 250
        code, text = c.rcpt("nosuch@remote.test")
        assert code in (550, 554), (code, text)
        assert c.rcpt("x@mx.test")[0] == 250
    # sendmail recipients reach the catch-all too.
    sendmail(t, ["-i", "nobody-here"], b"Subject: via sendmail\n\nx\n")
    wait_for(lambda: len(t.maildir("owner")) == 2, what="sendmail to the catch-all")


def test_the_origin_survives_a_restart_in_the_queue_file(tern_factory, provider):
    # Held while the daemon runs, so the attempt after the restart reads
    # the envelope back from the queue file (not the in-memory copy).
    t = router(tern_factory, provider, hold_outbound="yes").start()
    sendmail(t, ["-i", "root"], CRON)
    wait_for(lambda: t.queued(), what="queued")
    qfile = t.spool / "msg" / t.queued()[0]
    assert b"\norigin local\n" in qfile.read_bytes()
    assert t.stop() == 0
    t.settings["hold_outbound"] = "no"
    t.write_config()
    t.start()
    wait_for(lambda: provider.messages, what="delivery after the restart")
    m = provider.messages[0]
    assert m["sender"] == ALLOWED
    assert email.message_from_bytes(m["data"])["From"] == "Cron Daemon <me@example.com>"


def test_sendmail_bs_headers_are_qualified_too(tern_factory):
    """`sendmail -bs`: bare names in the address fields get @qualify_domain
    as with plain sendmail (the header arrives in pieces through the SMTP
    session; a streaming qualifier does it)."""
    from test_local import sendmail
    t = tern_factory(qualify_domain="home.example").start()
    dialog = (b"EHLO script\r\nMAIL FROM:<bs@mx.test>\r\nRCPT TO:<bsq@localhost>\r\nDATA\r\n"
              b"From: root\r\nTo: bsq, \"Ops\" <ops>\r\nSubject: root\r\n\r\nTo: body\r\n.\r\nQUIT\r\n")
    r = sendmail(t, ["-bs"], dialog)
    assert r.returncode == 0, r.stderr
    m = wait_for(lambda: t.maildir("bsq"), what="-bs delivery")[0]
    assert b"\nFrom: root@home.example\nTo: bsq@home.example, \"Ops\" <ops@home.example>\nSubject: root\n\nTo: body\n" in m, m
