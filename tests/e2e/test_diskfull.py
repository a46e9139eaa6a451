"""Disk full (issue 12, part 3): the spool on a 2 MiB tmpfs mounted by the
test. Below `min_free_space` new mail gets 452 4.3.1 at MAIL and sendmail
exits 75 (EX_TEMPFAIL); with the check off, a message larger than the free
space gets 452 4.3.1 at the end of DATA and leaves no file behind; the
daemon keeps serving, accepts mail again by itself once space returns, and
delivers what it had queued before the disk filled.

Needs root (mount); fails, never skips, when the mount is impossible."""

import os
import signal
import smtplib
import subprocess
import time

import pytest

from harness import TERN_BIN, Sink, wait_for

TMPFS_SIZE = "2m"
MIN_FREE = 512 * 1024
# The daemon re-checks free space at most once a second (spool::space::SPACE_RECHECK).
RECHECK = 1.2


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a {TMPFS_SIZE} tmpfs on {mnt} (this test needs root): {r.stderr}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def message(token, size=0):
    pad = b"".join(b"%07d padding padding padding padding padding padding\r\n" % i
                   for i in range(size // 60 + 1)) if size else b""
    return b"Subject: " + token.encode() + b"\r\n\r\ntoken=" + token.encode() + b"\r\n" + pad


def reload(t, **settings):
    t.settings.update({k: str(v) for k, v in settings.items()})
    t.write_config()
    t.send(signal.SIGHUP)
    time.sleep(0.3)


def fill(spool, leave):
    """A filler file so that `leave` bytes stay free."""
    filler = spool.parent / "filler"
    size = free_bytes(spool) - leave
    with open(filler, "ab") as f:
        f.write(b"\0" * max(size, 0))
    return filler


def sendmail(t, token):
    return subprocess.run([TERN_BIN, "-c", str(t.conf), "sendmail", "-oi", "root"],
                          input=message(token).replace(b"\r\n", b"\n"), capture_output=True, timeout=30)


def test_disk_full(tern_factory, small_fs):
    sink = Sink()
    try:
        spool = small_fs / "spool"
        t = tern_factory(spool_dir=spool, smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         hold_outbound="yes", min_free_space=MIN_FREE)
        t.spool = spool  # harness.Tern assumes DIR/spool
        t.start()
        # Mail queued before the disk fills.
        with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
            c.sendmail("a@lan.test", ["x@far.test"], message("before"))
        assert len(t.queued()) == 1

        # 1. Below min_free_space: 452 4.3.1 at MAIL, and at DATA for a
        # transaction that began before; sendmail exits 75.
        early = smtplib.SMTP("127.0.0.1", t.port, timeout=10)
        early.ehlo()
        assert early.mail("a@lan.test")[0] == 250
        assert early.rcpt("x@far.test")[0] == 250
        filler = fill(spool, MIN_FREE // 2)
        assert free_bytes(spool) < MIN_FREE
        time.sleep(RECHECK)
        early.putcmd("data")
        code, text = early.getreply()
        assert (code, text[:5]) == (452, b"4.3.1"), (code, text)
        early.quit()
        with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
            c.ehlo()
            code, text = c.mail("a@lan.test")
            assert (code, text[:5]) == (452, b"4.3.1"), (code, text)
            # The session goes on: NOOP, and MAIL again is still refused.
            assert c.noop()[0] == 250
            assert c.mail("a@lan.test")[0] == 452
        r = sendmail(t, "dropped-when-full")
        assert r.returncode == 75, (r.returncode, r.stderr)
        assert b"min_free_space" in r.stderr
        assert not [p for p in (spool / "drop").iterdir()]

        # 2. Check off: a message larger than the free space gets 452 4.3.1
        # at the end of DATA and leaves nothing in tmp/ or msg/.
        reload(t, min_free_space=0)
        big = message("too-big", size=free_bytes(spool) + 200 * 1024)
        with smtplib.SMTP("127.0.0.1", t.port, timeout=30) as c:
            c.ehlo()
            assert c.mail("a@lan.test")[0] == 250
            assert c.rcpt("x@far.test")[0] == 250
            code, text = c.data(big)
            assert (code, text[:5]) == (452, b"4.3.1"), (code, text)
            # Same session, a small message fits: the daemon keeps serving.
            assert c.mail("a@lan.test")[0] == 250
            assert c.rcpt("x@far.test")[0] == 250
            assert c.data(message("small-after-enospc"))[0] == 250
        assert not list((spool / "tmp").iterdir())
        assert len(t.queued()) == 2
        assert "too-big" not in b"".join((spool / "msg" / q).read_bytes() for q in t.queued()).decode(errors="replace")
        # sendmail on a disk with no room at all (check off): EX_TEMPFAIL
        # too, no partial drop left.
        fill(spool, 0)
        r = subprocess.run([TERN_BIN, "-c", str(t.conf), "sendmail", "-oi", "root"],
                           input=message("big-drop", size=64 * 1024), capture_output=True, timeout=30)
        assert r.returncode == 75, (r.returncode, r.stderr)
        assert not list((spool / "drop").iterdir())

        # 3. Check back on, still full: refused; space returns: accepted
        # again without a restart or reload.
        reload(t, min_free_space=MIN_FREE)
        time.sleep(RECHECK)
        with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
            c.ehlo()
            assert c.mail("a@lan.test")[0] == 452
        filler.unlink()
        assert free_bytes(spool) > MIN_FREE
        deadline = time.monotonic() + 5
        while True:
            with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
                c.ehlo()
                code = c.mail("a@lan.test")[0]
                if code == 250:
                    assert c.rcpt("x@far.test")[0] == 250
                    assert c.data(message("after-space-returned"))[0] == 250
                    break
            assert time.monotonic() < deadline, "mail still refused after space returned"
            time.sleep(0.2)
        assert sendmail(t, "drop-after-space-returned").returncode == 0
        assert t.proc.poll() is None

        # 4. Everything queued is delivered (the drop goes to root's Maildir).
        reload(t, hold_outbound="no")
        wait_for(lambda: len(sink.messages) >= 3 and not t.queued(), timeout=20, what="queued mail delivered")
        got = b"".join(m["data"] for m in sink.messages)
        for tok in (b"before", b"small-after-enospc", b"after-space-returned"):
            assert b"token=" + tok + b"\r\n" in got, tok
        assert b"too-big" not in got
        wait_for(lambda: any(b"drop-after-space-returned" in m for m in t.maildir("root")), timeout=10,
                 what="drop delivered")
        assert not list((spool / "tmp").iterdir())
        assert not list((spool / "corrupt").iterdir())
    finally:
        sink.close()


PAGE = 4096
TRAILER_LEN = 28  # spool::TRAILER_LEN


def test_enospc_at_commit_gives_452_and_leaves_no_file(tern_factory, small_fs):
    """The content fits the disk to the byte but its trailer, written at the
    commit, does not: 452 4.3.1 after DATA, nothing in tmp/ or msg/, and the
    commit (not the DATA write) is what failed."""
    spool = small_fs / "spool"
    t = tern_factory(spool_dir=spool, hold_outbound="yes", min_free_space=0)
    t.spool = spool
    t.start()

    def send(body):
        with smtplib.SMTP("127.0.0.1", t.port, timeout=30) as c:
            c.ehlo()
            assert c.mail("a@lan.test")[0] == 250
            assert c.rcpt("x@far.test")[0] == 250
            return c.data(body)

    # Calibrate: the queue file of a message is its envelope and header
    # (fixed length for these addresses), the content and the trailer.
    probe = b"Subject: probe\r\n\r\n" + b"p" * 100 + b"\r\n"
    assert send(probe)[0] == 250
    (q,) = t.queued()
    overhead = (spool / "msg" / q).stat().st_size - TRAILER_LEN - len(probe)
    # A content that ends 10 bytes before a page boundary: the trailer needs
    # one more page, which the disk will not have.
    pages = 40
    content_len = pages * PAGE - 10 - overhead
    line = b"x" * 70 + b"\r\n"
    head = b"Subject: exact fit\r\n\r\n"
    n, rest = divmod(content_len - len(head), len(line))
    body = head + line * n + b"y" * (rest - 2) + b"\r\n" if rest >= 2 else None
    assert body is not None and len(body) == content_len
    filler = small_fs / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * (free_bytes(spool) - pages * PAGE))
    assert free_bytes(spool) == pages * PAGE
    code, text = send(body)
    assert (code, text[:5]) == (452, b"4.3.1"), (code, text)
    assert t.queued() == [q]
    assert not list((spool / "tmp").iterdir())
    log = t.log_text()
    assert "commit failed" in log and "No space left" in log, log[-2000:]
    # Room again: the same message is accepted.
    filler.unlink()
    assert send(body)[0] == 250
    assert len(t.queued()) == 2
    assert t.proc.poll() is None


def test_drop_waits_for_space_instead_of_corrupt(tern_factory, small_fs):
    """A sendmail drop (accepted: exit 0) that the daemon cannot import
    because the disk is full stays in drop/ and is delivered once space
    returns; it is never set aside in corrupt/."""
    spool = small_fs / "spool"
    t = tern_factory(spool_dir=spool, min_free_space=0)
    t.spool = spool
    t.start()
    t.stop()
    r = subprocess.run([TERN_BIN, "-c", str(t.conf), "sendmail", "-oi", "root"],
                       input=message("waits-for-space", size=100 * 1024).replace(b"\r\n", b"\n"),
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    filler = fill(spool, 0)
    t.start()
    time.sleep(2.5)  # the start-up import and two scans
    assert len(list((spool / "drop").iterdir())) == 1
    assert not list((spool / "corrupt").iterdir())
    assert not list((spool / "tmp").iterdir())
    assert "kept for the next scan" in t.log_text()
    filler.unlink()
    wait_for(lambda: any(b"waits-for-space" in m for m in t.maildir("root")), timeout=10,
             what="the drop delivered once space returned")
    assert not list((spool / "drop").iterdir())
    assert not list((spool / "corrupt").iterdir())
