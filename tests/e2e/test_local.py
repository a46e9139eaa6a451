"""Local mail the Unix way: sendmail, mailq, queue tools, aliases, mbox."""

import os
import shutil
import signal
import subprocess

from harness import TERN_BIN, Sink, wait_for


def sendmail(t, args, data, argv0=None):
    if argv0:
        link = t.dir / argv0
        if not link.exists():
            link.symlink_to(TERN_BIN)
        cmd = [str(link), "-c", str(t.conf), *args]
    else:
        cmd = [TERN_BIN, "-c", str(t.conf), "sendmail", *args]
    return subprocess.run(cmd, input=data, capture_output=True, timeout=30)


def test_sendmail_symlink_with_daemon_running(tern):
    r = sendmail(tern, ["-oi", "-f", "cron@mx.test", "root"], b"Subject: cron output\n\nline 1\n.\nline 3\n",
                 argv0="sendmail")
    assert r.returncode == 0, r.stderr
    got = wait_for(lambda: tern.maildir("root"), timeout=5, what="delivery from sendmail")
    m = got[0]
    assert m.startswith(b"Return-Path: <cron@mx.test>\nDelivered-To: root@mx.test\nReceived: by mx.test (tern sendmail, uid ")
    assert b"line 1\n.\nline 3\n" in m, "with -oi a lone dot is content"
    assert b"Date: " in m and b"Message-ID: <" in m and b"From: cron@mx.test" in m


def test_sendmail_lone_dot_ends_input_without_i(tern):
    r = sendmail(tern, ["dot@localhost"], b"Subject: x\n\nbefore\n.\nafter\n")
    assert r.returncode == 0, r.stderr
    m = wait_for(lambda: tern.maildir("dot"), what="delivery")[0]
    assert b"before\n" in m and b"after" not in m


def test_sendmail_t_reads_recipients_and_strips_bcc(tern):
    msg = (b"From: Script <script@mx.test>\nTo: a@localhost, \"B, Person\" <b@localhost>\n"
           b"Cc: c@localhost\nBcc: hidden@localhost\nSubject: -t test\n\nbody without final newline")
    r = sendmail(tern, ["-t", "-i"], msg)
    assert r.returncode == 0, r.stderr
    for user in ("a", "b", "c", "hidden"):
        m = wait_for(lambda: tern.maildir(user), what=f"delivery to {user}")[0]
        assert b"Bcc:" not in m and b"hidden@localhost" not in m.split(b"Delivered-To: hidden@localhost", 1)[-1]
        assert m.endswith(b"body without final newline\n")


def test_sendmail_usage_and_errors(tern):
    r = sendmail(tern, ["-X"], b"")
    assert r.returncode == 64  # EX_USAGE
    r = sendmail(tern, [], b"Subject: x\n\nno recipients\n")
    assert r.returncode == 64
    r = sendmail(tern, ["bad address@@"], b"x\n")
    assert r.returncode == 65  # EX_DATAERR


def test_large_8bit_crlf_input_streams(tern_factory):
    t = tern_factory(max_message_size="20M").start()
    body = ("ünïcödé line\r\n" * 200000).encode()  # ~3.2 MB, CRLF, 8-bit
    r = sendmail(t, ["-i", "big@localhost"], b"Subject: big\r\n\r\n" + body)
    assert r.returncode == 0, r.stderr
    m = wait_for(lambda: t.maildir("big"), timeout=20, what="big delivery")[0]
    assert m.endswith(body.replace(b"\r\n", b"\n"))  # mailboxes hold LF


def test_mailq_shows_deferred_with_reason_and_queue_delete(tern_factory):
    sink = Sink({"rcpt": "451 4.2.0 mailbox busy"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        r = sendmail(t, ["-i", "far@remote.test"], b"Subject: q\n\nqueued\n")
        assert r.returncode == 0
        q = wait_for(lambda: (lambda o: o if "deferred" in o else None)(t.cmd("mailq").stdout.decode()),
                     what="deferred in mailq")
        assert "far@remote.test (deferred: 127.0.0.1[127.0.0.1]" in q and "451 4.2.0 mailbox busy" in q, q
        qid = t.queued()[0]
        show = t.cmd("queue", "show", qid).stdout.decode()
        assert "Subject: q" in show and "attempts: 1" in show, show
        assert t.cmd("queue", "delete", qid).returncode == 0
        assert t.queued() == []
        assert "Mail queue is empty" in t.cmd("mailq").stdout.decode()
        assert t.cmd("queue", "delete", qid).returncode != 0
    finally:
        sink.close()


def test_queue_flush_releases_held_mail(tern_factory):
    sink = Sink()
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none", hold_outbound="yes").start()
        r = sendmail(t, ["-i", "x@remote.test"], b"Subject: held\n\nwait\n")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: "held" in t.cmd("mailq").stdout.decode(), what="held")
        assert sink.messages == []
        r = t.cmd("queue", "flush")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: sink.messages, what="flushed delivery")
    finally:
        sink.close()


def test_aliases_local_remote_and_loop(tern_factory):
    sink = Sink()
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none")
        (t.dir / "aliases").write_text(
            "# router set-up\nroot: admin@example.test, localcopy\n"
            "team: alice,\n  bob\nloop1: loop2\nloop2: loop1\npipe: |/bin/sh -c 'touch /tmp/pwned'\n"
        )
        t.start()
        wait_for(lambda: "never executed" in t.log_text() or "not supported" in t.log_text(),
                 what="the refused |command alias in the log")
        r = sendmail(t, ["-i", "root", "team@mx.test"], b"Subject: cron\n\nfrom cron\n")
        assert r.returncode == 0
        wait_for(lambda: sink.messages, what="root's mail relayed off the box")
        assert sink.messages[0]["rcpts"] == ["admin@example.test"]
        for user in ("localcopy", "alice", "bob"):
            wait_for(lambda: t.maildir(user), what=f"alias delivery to {user}")
        r = sendmail(t, ["-i", "loop1"], b"Subject: loop\n\nx\n")
        assert r.returncode == 0
        wait_for(lambda: "alias expansion of loop1 failed" in t.log_text(), what="loop detected")
        assert not os.path.exists("/tmp/pwned")
    finally:
        sink.close()


def test_postmaster_always_resolves(tern_factory):
    t = tern_factory(local_recipients="passwd").start()
    import smtplib
    with smtplib.SMTP("127.0.0.1", t.port) as c:
        c.sendmail("a@x.test", ["postmaster"], b"Subject: pm\r\n\r\nto postmaster\r\n")
    m = wait_for(lambda: t.maildir("root"), what="postmaster -> root")[0]
    assert b"to postmaster" in m


def test_mbox_delivery_exact_bytes(tern_factory):
    t = tern_factory(local_delivery="mbox").start()
    import smtplib
    with smtplib.SMTP("127.0.0.1", t.port) as c:
        c.sendmail("s@x.test", ["mb@localhost"], b"Subject: one\r\n\r\nFrom here\r\n>From there\r\n")
        c.sendmail("", ["mb@localhost"], b"Subject: two\r\n\r\nsecond\r\n")
    path = t.mail / "mb"
    wait_for(lambda: path.exists() and path.read_bytes().count(b"\nFrom ") + path.read_bytes().startswith(b"From ") >= 2,
             what="two mbox entries")
    data = path.read_bytes()
    first, second = data.split(b"\n\nFrom MAILER-DAEMON ")
    assert first.startswith(b"From s@x.test ")
    assert b"\r" not in data
    assert first.endswith(b"\n\n>From here\n>>From there")
    assert b"Return-Path: <s@x.test>\nDelivered-To: mb@localhost\nReceived: from " in first
    assert second.rstrip(b"\n").endswith(b"Subject: two\n\nsecond")
    assert data.endswith(b"second\n\n")


def test_sendmail_bs_smtp_on_stdin(tern):
    dialog = (b"EHLO script\r\nMAIL FROM:<bs@mx.test>\r\nRCPT TO:<bsuser@localhost>\r\nDATA\r\n"
              b"Subject: via -bs\r\n\r\n..dot-stuffed line\r\n.\r\nQUIT\r\n")
    r = sendmail(tern, ["-bs"], dialog)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert out.startswith("220 ") and "354 " in out and "250 2.0.0 Ok: queued as" in out and "221 " in out, out
    m = wait_for(lambda: tern.maildir("bsuser"), what="-bs delivery")[0]
    assert b"Subject: via -bs\n\n.dot-stuffed line\n" in m


def test_sendmail_as_an_unprivileged_user():
    """The daemon runs as root with a root-owned spool; `nobody` submits."""
    import os
    import pwd
    import tempfile
    from pathlib import Path

    from harness import Tern

    if os.getuid() != 0:
        raise AssertionError("this test needs root (CI runs as root)")
    base = Path(tempfile.mkdtemp(prefix="tern-nonroot-", dir="/tmp"))
    base.chmod(0o755)
    # nobody runs a copy: the checkout may not be traversable (a clone
    # under /root, which is 0700).
    tern_bin = base / "tern"
    shutil.copy2(TERN_BIN, tern_bin)
    tern_bin.chmod(0o755)
    t = Tern(base)
    try:
        t.start()
        # The port opens before the spool is created: wait for recovery.
        wait_for(lambda: "started: " in t.log_text(), what="start-up recovery")
        nobody = pwd.getpwnam("nobody")

        def demote():
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)

        r = subprocess.run([str(tern_bin), "-c", str(t.conf), "sendmail", "-i", "user1@localhost"],
                           input=b"Subject: from nobody\n\nunprivileged\n", capture_output=True,
                           timeout=30, preexec_fn=demote)
        assert r.returncode == 0, r.stderr
        m = wait_for(lambda: t.maildir("user1"), what="delivery of nobody's mail")[0]
        assert b"unprivileged" in m and f"uid {nobody.pw_uid}".encode() in m
        assert b"From: nobody@mx.test" in m
        # nobody cannot list the drop directory or the spool.
        ls = subprocess.run(["ls", str(t.spool / "drop")], capture_output=True, preexec_fn=demote, timeout=10)
        assert ls.returncode != 0
    finally:
        t.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_s_nail_calls_sendmail_like_cron_does(tern):
    """A real mail client (s-nail, as used by cron/logwatch scripts) hands
    its message to tern's sendmail."""
    link = tern.dir / "sendmail"
    if not link.exists():
        link.symlink_to(TERN_BIN)
    env = dict(os.environ, TERN_CONFIG=str(tern.conf), HOME=str(tern.dir), MAILRC="/dev/null")
    r = subprocess.run(["s-nail", "-n", "-S", f"mta={link}", "-S", "sendwait", "-s", "nightly backup report",
                        "admin@localhost"], input=b"backup finished: 42 files\n", capture_output=True,
                       env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    m = wait_for(lambda: tern.maildir("admin"), what="s-nail delivery")[0]
    assert b"Subject: nightly backup report" in m and b"backup finished: 42 files" in m


def test_report_tools_end_quietly_when_the_reader_goes_away(tern):
    """`mailq | head` and friends: a reader that has gone away ends the tool
    by SIGPIPE, as it does a C tool, not by a panic (an abort and a core
    dump in the release build)."""
    link = tern.dir / "mailq"
    if not link.exists():
        link.symlink_to(TERN_BIN)
    for cmd in ([TERN_BIN, "-c", str(tern.conf), "mailq"],
                [str(link), "-c", str(tern.conf)],
                [TERN_BIN, "-c", str(tern.conf), "check-config"],
                [TERN_BIN, "--help"]):
        r_fd, w_fd = os.pipe()
        os.close(r_fd)  # the reader is gone before the first write
        try:
            r = subprocess.run(cmd, stdout=w_fd, stderr=subprocess.PIPE, timeout=30)
        finally:
            os.close(w_fd)
        assert b"panicked" not in r.stderr, (cmd, r.stderr)
        assert r.returncode == -signal.SIGPIPE, (cmd, r.returncode, r.stderr)


def test_an_argument_that_is_not_utf8_is_refused_not_a_panic(tern):
    """argv is bytes: a recipient or queue ID that is not UTF-8 (a Latin-1
    MAILTO, a mistyped ID) is an error like any bad argument."""
    for args in ([b"sendmail", b"-i", b"j\xf6rg@localhost"], [b"queue", b"show", b"\xff"]):
        r = subprocess.run([TERN_BIN.encode(), b"-c", bytes(tern.conf), *args],
                           input=b"Subject: x\n\nx\n", capture_output=True, timeout=30)
        assert b"panicked" not in r.stderr, (args, r.stderr)
        assert r.returncode in (64, 65), (args, r.returncode, r.stderr)
    # The same byte in a header read by `sendmail -t`: not an address.
    r = subprocess.run([TERN_BIN.encode(), b"-c", bytes(tern.conf), b"sendmail", b"-t", b"-i"],
                       input=b"To: j\xf6rg@far.example\nSubject: x\n\nx\n",
                       capture_output=True, timeout=30)
    assert b"panicked" not in r.stderr, r.stderr
    assert r.returncode != 0, (r.returncode, r.stderr)
    assert tern.queued() == []
    assert not list((tern.spool / "drop").glob("*")) if (tern.spool / "drop").is_dir() else True


def test_sendmail_message_under_max_message_size_is_delivered(tern_factory):
    """What sendmail accepts (exit 0) the daemon must import: it used to
    count the drop after its own Received: and CRLF line ends, so a
    message of many short lines under the limit went to corrupt/."""
    t = tern_factory(max_message_size="2K").start()
    body = b"a\n" * 900  # 1800 octets as written, 2700 with CRLF
    r = sendmail(t, ["-i", "short@localhost"], b"Subject: short lines\n\n" + body)
    assert r.returncode == 0, r.stderr
    m = wait_for(lambda: t.maildir("short"), timeout=5, what="delivery under the limit")[0]
    assert m.endswith(body)
    # The same through -bs: the SMTP session counts the data as sent.
    data = b"Subject: bs\r\n\r\n" + b"b\r\n" * 660
    dialog = (b"EHLO s\r\nMAIL FROM:<bs@mx.test>\r\nRCPT TO:<shortbs@localhost>\r\nDATA\r\n"
              + data + b".\r\nQUIT\r\n")
    r = sendmail(t, ["-bs"], dialog)
    assert b"250 2.0.0 Ok: queued as" in r.stdout, r.stdout
    m = wait_for(lambda: t.maildir("shortbs"), timeout=5, what="-bs delivery under the limit")[0]
    assert m.endswith(b"b\n" * 660)
    # Over the limit as written: refused by sendmail, nothing queued.
    r = sendmail(t, ["-i", "long@localhost"], b"Subject: x\n\n" + b"c" * 2100 + b"\n")
    assert r.returncode == 65, r.stderr
