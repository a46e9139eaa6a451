"""Issue 11, file-system items: no acknowledged mail overwritten (3), every
submitting user reaches every daemon user (4), no symlink crossed as root
and no FIFO blocking the loop (8), LF line endings in mailboxes (10), long
sendmail lines broken like Postfix (17).

Tests run as root (CI does); tests that need a second user use `nobody`
and `daemon`, with the binary copied to a directory every user can reach.
"""

import os
import pwd
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from harness import TERN_BIN, Sink, Tern, faketime_env, wait_for

def need_root():
    if os.getuid() != 0:
        raise AssertionError("this test needs root (CI runs as root)")


def need_tool(name):
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not installed (see the README's package list)")
    return path


class PublicTern(Tern):
    """A tern whose directory, config and binary every local user can
    reach (a copy of the binary under a 0755 directory in /tmp), started
    with an optional extra environment (libfaketime)."""

    def __init__(self, base, env=None, **overrides):
        super().__init__(base, **overrides)
        self.bin = str(base / "bin" / "tern")
        (base / "bin").mkdir(exist_ok=True)
        shutil.copy2(TERN_BIN, self.bin)
        os.chmod(base / "bin", 0o755)
        os.chmod(self.bin, 0o755)
        os.chmod(self.conf, 0o644)
        self.env = env or {}

    def start(self):
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([self.bin, "-c", str(self.conf)], stdout=logf, stderr=logf,
                                     env=dict(os.environ, **self.env))
        logf.close()
        try:
            wait_banner(self.port, self.proc)
        except (TimeoutError, OSError):
            self.stop()
            raise RuntimeError("tern did not start:\n" + self.log_text())
        return self

    def sendmail(self, args, data, user=None, umask=0o077):
        """Runs `sendmail` as `user` (a name; None: root) with `umask`."""
        def demote():
            os.umask(umask)
            if user is not None:
                pw = pwd.getpwnam(user)
                os.setgroups([])
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)

        return subprocess.run([self.bin, "-c", str(self.conf), "sendmail", *args], input=data,
                              capture_output=True, timeout=30, preexec_fn=demote)


def wait_banner(port, proc, timeout=10.0):
    """A banner means the loop runs (privileges dropped, spool recovered)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise OSError(f"tern exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(512).startswith(b"220"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"no banner on port {port}")


@pytest.fixture
def public_dir():
    """A 0755 directory under /tmp (pytest's tmp_path is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="tern-trustfs-", dir="/tmp"))
    base.chmod(0o755)
    made = []

    def make(**overrides):
        d = base / f"t{len(made)}"
        d.mkdir()
        d.chmod(0o755)
        t = PublicTern(d, **overrides)
        made.append(t)
        return t

    yield make
    for t in made:
        try:
            t.stop(timeout=5)
        except Exception:
            pass
    shutil.rmtree(base, ignore_errors=True)


def send(t, rcpts, subject, body="body\r\n", sender="a@client.test"):
    msg = f"Subject: {subject}\r\n\r\n{body}".encode()
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail(sender, rcpts, msg)


def queued_subjects(t):
    out = []
    for name in t.queued():
        data = (t.spool / "msg" / name).read_bytes()
        for line in data.split(b"\r\n"):
            if line.startswith(b"Subject: "):
                out.append(line[9:].decode())
                break
    return sorted(out)


# --- item 3: acknowledged mail is never overwritten ---------------------------------


def test_kill9_and_immediate_restart_lose_no_acknowledged_mail(tern_factory):
    t = tern_factory(hold_outbound="yes")
    sent = []
    for rnd in range(5):
        t.start()
        for i in range(10):
            subject = f"round {rnd} message {i}"
            send(t, [f"r{i}@remote.test"], subject)
            sent.append(subject)
        t.kill9()
    t.start()
    assert queued_subjects(t) == sorted(sent)
    out = t.cmd("mailq").stdout.decode()
    assert "in 50 Requests" in out, out


def test_same_clock_at_every_boot_overwrites_nothing(public_dir):
    """A router without a battery-backed clock boots at the same second
    every time (libfaketime freezes the wall clock; monotonic time runs)."""
    env = faketime_env(FAKETIME="2020-01-01 00:00:00")
    t = public_dir(env=env, hold_outbound="yes")
    sent = []
    for boot in range(3):
        t.start()
        for i in range(5):
            subject = f"boot {boot} message {i}"
            send(t, [f"r{i}@remote.test"], subject)
            sent.append(subject)
        if boot == 1:
            t.kill9()
        else:
            assert t.stop() == 0
    assert queued_subjects(t) == sorted(sent)
    out = subprocess.run([t.bin, "-c", str(t.conf), "mailq"], capture_output=True).stdout.decode()
    # The clock really was frozen: every message arrived in the same second.
    assert out.count("01 Jan 2020 00:00:00") == 15, out
    ids = [l.split()[0] for l in out.splitlines() if "01 Jan 2020" in l]
    assert len(set(ids)) == 15 and all(i.startswith("005E0BE100") for i in ids), ids


# --- item 4: every submitting user reaches every daemon user ------------------------


def test_root_sendmail_reaches_a_daemon_running_as_nobody(public_dir):
    need_root()
    t = public_dir(user="nobody").start()
    r = t.sendmail(["-i", "user1@localhost"], b"Subject: cron\n\nroot's cron output\n")
    assert r.returncode == 0, r.stderr
    m = wait_for(lambda: t.maildir("user1"), what="delivery of root's drop")[0]
    assert b"root's cron output" in m and b"uid 0" in m
    assert not list((t.spool / "corrupt").iterdir())


def test_unprivileged_sendmail_reaches_a_root_daemon(public_dir):
    need_root()
    t = public_dir().start()
    r = t.sendmail(["-i", "user2@localhost"], b"Subject: hi\n\nfrom nobody\n", user="nobody")
    assert r.returncode == 0, r.stderr
    m = wait_for(lambda: t.maildir("user2"), what="delivery of nobody's drop")[0]
    nobody = pwd.getpwnam("nobody")
    assert b"from nobody" in m and f"uid {nobody.pw_uid}".encode() in m


def test_unprivileged_sendmail_reaches_a_daemon_running_as_another_user(public_dir):
    need_root()
    t = public_dir(user="daemon").start()
    r = t.sendmail(["-i", "user3@localhost"], b"Subject: hi\n\nnobody to daemon\n", user="nobody")
    assert r.returncode == 0, r.stderr
    m = wait_for(lambda: t.maildir("user3"), what="delivery of nobody's drop to daemon")[0]
    assert b"nobody to daemon" in m
    assert not list((t.spool / "corrupt").iterdir())


def test_root_drop_left_0600_while_the_daemon_was_down_is_delivered(public_dir):
    """A drop written 0600 (by an older sendmail) before a daemon running as
    nobody starts: made readable at start, its owner (the submitter) kept."""
    need_root()
    t = public_dir(user="nobody")
    r = t.sendmail(["-i", "user4@localhost"], b"Subject: old\n\nwritten while down\n")
    assert r.returncode == 0, r.stderr
    drops = [p for p in (t.spool / "drop").iterdir() if not p.name.startswith(".")]
    assert len(drops) == 1
    drops[0].chmod(0o600)
    t.start()
    try:
        m = wait_for(lambda: t.maildir("user4"), what="delivery of a 0600 drop")[0]
    except TimeoutError:
        raise AssertionError(t.log_text())
    assert b"written while down" in m and b"uid 0" in m


# --- item 8: no symlink crossed as root, no FIFO blocking the loop -----------------------


def test_chown_at_start_crosses_no_symlink_and_no_hard_link(public_dir):
    need_root()
    t = public_dir(user="nobody")
    outside = t.dir / "etc"
    outside.mkdir()
    (outside / "shadow").write_text("secret")
    t.mail.mkdir()
    (t.mail / "x").symlink_to(outside)
    os.link(outside / "shadow", t.mail / "hard")
    t.start()
    assert outside.stat().st_uid == 0
    assert (outside / "shadow").stat().st_uid == 0
    assert t.mail.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert "not handing" in t.log_text()


def test_recovery_does_not_follow_a_symlinked_tmp(public_dir):
    t = public_dir()
    t.start()
    t.stop()
    outside = t.dir / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    shutil.rmtree(t.spool / "tmp")
    (t.spool / "tmp").symlink_to(outside)
    try:
        t.start()
        started = True
    except RuntimeError:
        started = False
    assert (outside / "precious").read_text() == "keep me"
    assert not started, "tern must refuse a spool whose tmp/ is a symlink"
    assert "symlink" in t.log_text()


def test_maildir_delivery_into_a_symlink_is_refused(public_dir):
    t = public_dir().start()
    outside = t.dir / "outside"
    (outside / "new").mkdir(parents=True)
    t.mail.mkdir(exist_ok=True)
    (t.mail / "eve").symlink_to(outside)
    (t.mail / "bob").mkdir()
    (t.mail / "bob" / "new").symlink_to(outside / "new")
    send(t, ["eve@localhost"], "to eve")
    send(t, ["bob@localhost"], "to bob")
    wait_for(lambda: t.log_text().count("status=deferred") >= 2, what="both deliveries deferred")
    log = t.log_text()
    assert "to=<eve@localhost>" in log and "to=<bob@localhost>" in log
    assert "symlinks are not followed" in log
    assert sorted(p.name for p in outside.iterdir()) == ["new"]
    assert list((outside / "new").iterdir()) == []
    assert len(t.queued()) == 2


def test_fifo_as_mbox_does_not_block_the_daemon(public_dir):
    t = public_dir(local_delivery="mbox").start()
    t.mail.mkdir(exist_ok=True)
    os.mkfifo(t.mail / "fifo")
    send(t, ["fifo@localhost"], "into a fifo")
    # The loop still serves: a new client gets its banner and a NOOP answer.
    start = time.monotonic()
    with smtplib.SMTP("127.0.0.1", t.port, timeout=3) as c:
        assert c.noop()[0] == 250
    assert time.monotonic() - start < 2
    wait_for(lambda: "status=deferred" in t.log_text(), what="deferral")
    assert "to=<fifo@localhost>" in t.log_text()
    assert len(t.queued()) == 1


# --- item 10: LF line endings in mailboxes --------------------------------------------------


def s_nail_print(path, home):
    """`p 1` in s-nail, non-interactively (what a user's mail reader shows)."""
    need_tool("s-nail")
    r = subprocess.run(["s-nail", "-n", "-R", "-f", str(path)], input=b"p 1\nq\n", capture_output=True,
                       timeout=20, env=dict(os.environ, HOME=str(home), MAILRC="/dev/null"))
    return (r.stdout + r.stderr).decode(errors="replace")


def utf8_message(subject):
    m = EmailMessage()
    m["Subject"] = subject
    m["From"] = "a@client.test"
    m["To"] = "reader@localhost"
    m.set_content("Grüße aus dem Router\nsecond line\n", charset="utf-8", cte="8bit")
    return m.as_bytes(policy=m.policy.clone(linesep="\r\n"))


def test_maildir_and_mbox_hold_lf_line_endings(public_dir):
    for fmt in ("maildir", "mbox"):
        t = public_dir(local_delivery=fmt).start()
        with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
            c.sendmail("a@client.test", ["reader@localhost"], utf8_message(f"lf {fmt}"))
        if fmt == "maildir":
            files = wait_for(lambda: t.maildir("reader"), what="maildir delivery")
            data, path = files[0], t.mail / "reader"
        else:
            mbox = t.mail / "reader"
            wait_for(lambda: mbox.exists() and mbox.stat().st_size > 0, what="mbox delivery")
            data, path = mbox.read_bytes(), mbox
        assert b"\r" not in data, data
        assert data.count(b"\n") >= 8
        assert b"Return-Path: <a@client.test>\nDelivered-To: reader@localhost\n" in data
        shown = s_nail_print(path, t.dir)
        assert "Invalid character set" not in shown and "Not a header line" not in shown, shown
        assert "Grüße aus dem Router" in shown and f"lf {fmt}" in shown, shown
        t.stop()


# --- item 17: long sendmail lines are broken, as Postfix does ------------------------------


def test_sendmail_lines_over_998_octets_are_broken(public_dir):
    sink = Sink()
    try:
        t = public_dir(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        long_header = "X-Long: " + "h" * 2000
        long_body = "b" * 2000
        data = f"Subject: long\n{long_header}\n\n{long_body}\nshort\n".encode()
        r = t.sendmail(["-i", "far@remote.test", "near@localhost"], data)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: sink.messages, what="relay")
        local = wait_for(lambda: t.maildir("near"), what="local delivery")[0]
        relayed = sink.messages[0]["data"]
        for text, sep in ((relayed, b"\r\n"), (local, b"\n")):
            lines = text.split(sep)
            assert max(len(l) for l in lines) <= 998, [len(l) for l in lines]
            # Broken with a continuation space, nothing lost.
            joined = text.replace(sep + b" ", b"")
            assert long_header.encode() in joined and long_body.encode() in joined
            assert b"\n" + b"short" in text
    finally:
        sink.close()
