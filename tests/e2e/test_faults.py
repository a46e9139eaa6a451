"""Issue 12, part 3: faults of the environment (clock, spool at start-up).

Clock: tests/e2e/test_trust_clock.py already covers a stale clock before a
restart (mail held in 2020, the daemon restarted in real time) and mail
that "arrived in the future" (2035, restarted in real time). Here: the
*same* stale second at every boot, and steps of the wall clock while the
daemon runs with deferred mail (forward by months, backward by most of a
year).

Spool at start-up: missing directories are recreated with a log line; a
spool the daemon cannot write (read-only mount, immutable directory) makes
tern refuse to start with exit 75 (EX_TEMPFAIL: the configuration is
valid, the environment is not ready; a supervisor retries later), as
Postfix refuses to start; garbage in `msg/` is set aside in `corrupt/`, one
log line per file, and the rest of the queue is delivered.

Everything is on 127.0.0.1. Missing tools (faketime, mount, chattr) fail
the test, they never skip it. The read-only and immutable cases need root
(the machine's tests run as root)."""

import email.utils
import os
import random
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import tern_factory_in
from harness import TERN_BIN, Sink, faked_clock, queue_id_second, wait_for

EX_TEMPFAIL = 75


@pytest.fixture
def tern_factory(request):
    """As conftest's, but in a directory of this module's own under /tmp,
    not pytest's numbered tmp_path: concurrent pytest runs of the same user
    prune each other's numbered directories, and a directory renamed away
    under a bind mount or `chattr +i` could not be cleaned up."""
    base = Path(tempfile.mkdtemp(prefix="tern-faults-"))
    yield from tern_factory_in(base, request)
    shutil.rmtree(base, ignore_errors=True)


def start(t):
    """Starts the daemon and waits for its recovery to finish (the port is
    bound before the spool is opened, so a connection alone proves nothing
    about the spool)."""
    n = t.log_text().count("started: ")
    t.start()
    wait_for(lambda: t.log_text().count("started: ") > n, what="start-up recovery")
    return t


def send(t, rcpts, body, sender="owner@localhost"):
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail(sender, rcpts, body)


# --- clock -------------------------------------------------------------------


def body(tag):
    return f"Subject: {tag}\r\n\r\n{tag}\r\n".encode()


def subjects(sink):
    return sorted(
        m["data"].split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for m in sink.messages
    )


def test_the_same_stale_second_at_every_boot_loses_nothing(tern_factory):
    """A board without a battery-backed clock boots at the same time every
    time. Here the clock stands still at that second (the harshest form:
    every message of every boot has the same arrival second, on which
    queue IDs are based). Three boots, three held messages each: all nine
    stay queued under nine IDs, and all nine are delivered once the hold is
    lifted."""
    sink = Sink()
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         hold_outbound="yes", retry_schedule="1s")
        tags = []
        with faked_clock(FAKETIME="2020-01-01 00:00:00"):
            for boot in range(3):
                t.start()
                for i in range(3):
                    tag = f"boot {boot} message {i}"
                    send(t, ["x@far.test"], body(tag))
                    tags.append(tag)
                assert t.stop() == 0
        queued = t.queued()
        assert len(queued) == 9, f"{len(queued)} of 9 messages queued: {queued}"
        for qid in queued:
            assert time.gmtime(queue_id_second(qid)).tm_year == 2020, qid
        t.settings["hold_outbound"] = "no"
        t.write_config()
        t.start()
        wait_for(lambda: len(sink.messages) >= 9 and not t.queued(), timeout=20,
                 what="nine deliveries")
        assert subjects(sink) == sorted(tags)
        assert not t.maildir("owner"), "a bounce was sent"
    finally:
        sink.close()


@pytest.mark.parametrize("step", ["+200d", "-300d"], ids=["forward_months", "backward_months"])
def test_clock_step_while_mail_is_deferred(tern_factory, step):
    """The wall clock steps while the daemon runs and a message is being
    deferred (NTP after a stale boot: forward; a bad RTC corrected:
    backward). Retries go on at the schedule's pace (1 s), the message is
    neither expired (max_queue_time is the default 5 days, far less than
    the step) nor parked; it is delivered once the next hop accepts."""
    attempts = []
    accept = []

    def rcpt(txn, addr):
        if addr == "x@far.test":
            attempts.append(time.monotonic())
        return "250 2.1.5 ok" if accept else "451 4.3.0 try later"

    clock = tern_factory.base / "faketime"
    clock.write_text("+0\n")
    sink = Sink({"rcpt": rcpt})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         retry_schedule="1s")
        with faked_clock(FAKETIME_TIMESTAMP_FILE=str(clock), FAKETIME_NO_CACHE="1"):
            t.start()
        send(t, ["x@far.test"], body("deferred across a clock step"))
        (first,) = wait_for(lambda: t.queued(), what="queued")
        wait_for(lambda: len(attempts) >= 2, timeout=15, what="two deferred attempts")
        clock.write_text(step + "\n")
        stepped = time.monotonic()
        before = len(attempts)
        # Mail arriving now is stamped with the stepped clock (checked in
        # its Received: header below: queue IDs stay above the spool's, so
        # they do not show a backward step).
        send(t, ["y@far.test"], body("arrived after the step"))
        wait_for(lambda: len(attempts) >= before + 3, timeout=15,
                 what="three attempts after the step")
        after = [a for a in attempts if a > stepped]
        # The schedule says 1 s; allow for the outbound session's set-up.
        assert after[2] - stepped < 10, after
        log = t.log_text()
        assert "expired" not in log, log
        assert "status=bounced" not in log, log
        assert not t.maildir("owner"), "a bounce was sent"
        assert len(t.queued()) == 2
        assert "451 4.3.0 try later" in t.cmd("mailq").stdout.decode()
        accept.append(True)
        wait_for(lambda: len(sink.messages) >= 2 and not t.queued(), timeout=15,
                 what="delivery")
        assert subjects(sink) == ["arrived after the step", "deferred across a clock step"]
        (after_step,) = [m["data"] for m in sink.messages if b"arrived after" in m["data"]]
        received = after_step.split(b"\r\n\r\n")[0].decode().split("Received:", 1)[1]
        stamp = email.utils.parsedate_to_datetime(received.split(";")[-1].split("\r\n")[0].strip())
        days = int(step[:-1])
        assert abs(stamp.timestamp() - time.time() - days * 86400) < 600, received
        assert not t.maildir("owner")
    finally:
        sink.close()


# --- spool directories at start-up ---------------------------------------------------


def start_expecting_exit(t, timeout=10):
    """Runs the daemon and returns its exit code; fails if it keeps running."""
    with open(t.log, "ab") as logf:
        p = subprocess.Popen([TERN_BIN, "-c", str(t.conf)], stdout=logf, stderr=logf)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise AssertionError("tern kept running:\n" + t.log_text())


def test_missing_spool_directories_are_recreated_with_a_log_line(tern_factory):
    t = tern_factory().start()
    assert t.stop() == 0
    for d in ("msg", "tmp", "state", "corrupt", "drop"):
        shutil.rmtree(t.spool / d)
    start(t)
    log = t.log_text()
    for d in ("msg", "tmp", "state", "corrupt", "drop"):
        assert (t.spool / d).is_dir(), d
        lines = [l for l in log.splitlines() if str(t.spool / d) in l and "created" in l]
        assert len(lines) == 1, (d, log)
    assert (t.spool / "drop").stat().st_mode & 0o7777 == 0o1733
    send(t, ["after@localhost"], body("after the directories were recreated"))
    wait_for(lambda: t.maildir("after"), what="delivery")


def test_a_missing_msg_dir_alone_is_reported_as_a_lost_queue(tern_factory):
    """msg/ gone while the rest of the spool is there: the queue it held is
    lost, which the log says in one line naming the directory."""
    t = tern_factory(hold_outbound="yes").start()
    send(t, ["x@far.test"], body("in the queue that disappears"))
    wait_for(lambda: t.queued(), what="queued")
    assert t.stop() == 0
    shutil.rmtree(t.spool / "msg")
    start(t)
    lines = [l for l in t.log_text().splitlines() if str(t.spool / "msg") in l]
    assert len(lines) == 1 and "missing" in lines[0], t.log_text()
    # The orphaned state (if any) is removed by recovery; the daemon serves.
    send(t, ["y@far.test"], body("new mail"))
    wait_for(lambda: len(t.queued()) == 1, what="new mail queued")


@contextmanager
def read_only_bind_mount(path):
    """`path` bind-mounted read-only onto itself (needs root)."""
    r = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
    assert r.returncode == 0, f"mount --bind failed (needs root): {r.stderr.decode()}"
    try:
        r = subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True)
        assert r.returncode == 0, f"read-only remount failed: {r.stderr.decode()}"
        probe = Path(path) / "msg" / "probe"
        with pytest.raises(OSError):
            probe.write_text("x")
        yield
    finally:
        if subprocess.run(["umount", str(path)]).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


@contextmanager
def immutable(path):
    """`chattr +i path`: even root cannot create files in it."""
    assert shutil.which("chattr"), "chattr is missing (e2fsprogs)"
    r = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    assert r.returncode == 0, f"chattr +i failed: {r.stderr.decode()}"
    try:
        with pytest.raises(OSError):
            (Path(path) / "probe").write_text("x")
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_read_only_spool_refuses_to_start(tern_factory):
    t = tern_factory(hold_outbound="yes").start()
    send(t, ["x@far.test"], body("queued before the spool went read-only"))
    wait_for(lambda: t.queued(), what="queued")
    assert t.stop() == 0
    queued = t.queued()
    with read_only_bind_mount(t.spool):
        code = start_expecting_exit(t)
        assert code == EX_TEMPFAIL, t.log_text()
        log = t.log_text()
        assert "Read-only file system" in log and str(t.spool) in log, log
        assert "panic" not in log
    assert t.queued() == queued
    # Writable again: it starts and has the message.
    start(t)
    assert t.queued() == queued
    assert "1 queued message" in t.log_text()


def test_immutable_spool_directory_refuses_to_start(tern_factory):
    t = tern_factory().start()
    assert t.stop() == 0
    with immutable(t.spool / "state"):
        code = start_expecting_exit(t)
        assert code == EX_TEMPFAIL, t.log_text()
        log = t.log_text()
        assert str(t.spool / "state") in log and "not writable" in log, log
    t.start()
    send(t, ["back@localhost"], body("writable again"))
    wait_for(lambda: t.maildir("back"), what="delivery")


def test_spool_turning_read_only_while_running_gets_451_and_recovers(tern_factory):
    """A spool remounted read-only under a running daemon (an fs error):
    new mail gets a temporary failure, nothing is acknowledged, the daemon
    keeps serving and takes mail again once the spool is writable."""
    t = tern_factory().start()
    with read_only_bind_mount(t.spool):
        with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
            with pytest.raises(smtplib.SMTPException) as e:
                c.sendmail("owner@localhost", ["ro@localhost"], body("refused"))
            code = getattr(e.value, "smtp_code", None) or next(
                iter(getattr(e.value, "recipients", {}).values()), (None,))[0]
            assert code in (451, 452), e.value
        assert t.proc.poll() is None, "tern died"
    send(t, ["rw@localhost"], body("accepted"))
    wait_for(lambda: t.maildir("rw"), what="delivery after the remount")
    assert not t.maildir("ro")
    assert "panic" not in t.log_text()


# --- garbage in msg/ ------------------------------------------------------------------


def test_corrupt_queue_files_are_set_aside_and_the_rest_is_delivered(tern_factory):
    sink = Sink()
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         hold_outbound="yes")
        t.start()
        good = [f"valid {i}" for i in range(3)]
        for tag in good + ["template"]:
            send(t, ["x@far.test"], body(tag))
        wait_for(lambda: len(t.queued()) == 4, what="four queued")
        assert t.stop() == 0
        msg = t.spool / "msg"
        # The last one becomes the template for the damaged files.
        template_id = max(t.queued())
        template = (msg / template_id).read_bytes()
        (msg / template_id).unlink()
        rng = random.Random(12)
        bad = {
            "00000000000000A1": bytes(rng.randrange(256) for _ in range(3000)),  # random bytes
            "00000000000000A2": template[:25],  # truncated inside the envelope
            "00000000000000A3": template[:-4] + b"zzz\n",  # bad trailer
            "00000000000000A4": template[:-40],  # trailer cut off
            "00000000000000A5": b"",  # zero length
            "not-a-queue-id": template,  # a name tern never makes
            "00000000000000a6x": template,
        }
        for name, data in bad.items():
            (msg / name).write_bytes(data)
        os.mkfifo(msg / "00000000000000A7")  # would block an open() forever
        bad["00000000000000A7"] = None
        (msg / "00000000000000A8").mkdir()
        bad["00000000000000A8"] = None
        t.settings["hold_outbound"] = "no"
        t.write_config()
        t.start()
        wait_for(lambda: len(sink.messages) >= 3 and not t.queued(), timeout=20,
                 what="the valid messages delivered")
        assert subjects(sink) == good
        log = t.log_text()
        corrupt = t.spool / "corrupt"
        for name, data in bad.items():
            assert (corrupt / name).exists() or (corrupt / name).is_fifo(), (name, log)
            if data is not None:
                assert (corrupt / name).read_bytes() == data
            lines = [l for l in log.splitlines() if name in l]
            assert len(lines) == 1, (name, lines)
            assert "corrupt" in lines[0], lines[0]
        assert sorted(p.name for p in msg.iterdir()) == []
        assert "panic" not in log
        assert t.proc.poll() is None
        # A second start finds nothing more to set aside.
        assert t.stop() == 0
        start(t)
        assert t.log_text().count("corrupt/") == log.count("corrupt/")
    finally:
        sink.close()


def test_a_damaged_state_file_does_not_lose_its_message(tern_factory):
    """The message file is intact but its state file is garbage: the state
    is set aside and the message delivered (to every recipient: a possible
    duplicate, never a loss)."""
    attempts = []

    def rcpt(txn, addr):
        attempts.append(addr)
        return "250 2.1.5 ok" if len(attempts) > 1 else "451 4.3.0 try later"

    sink = Sink({"rcpt": rcpt})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         retry_schedule="1h")
        t.start()
        send(t, ["x@far.test"], body("state damaged"))
        (qid,) = wait_for(lambda: t.queued(), what="queued")
        state = t.spool / "state" / qid
        wait_for(state.exists, what="state after the deferral")
        assert t.stop() == 0
        state.write_bytes(b"\x00garbage\xff\n")
        t.start()
        wait_for(lambda: sink.messages and not t.queued(), timeout=15, what="delivery")
        assert subjects(sink) == ["state damaged"]
        log = t.log_text()
        lines = [l for l in log.splitlines() if "state" in l and qid in l and "corrupt" in l]
        assert len(lines) == 1, log
        assert not (t.spool / "corrupt" / qid).exists(), "the message was set aside"
    finally:
        sink.close()


# --- a large queue at start-up ----------------------------------------------------------


def test_new_mail_does_not_wait_behind_a_recovered_queue(tern_factory):
    """After a restart every recovered message is due at once. The runner
    takes 16 per loop turn; it used to wait for the next 1 s tick between
    turns, so a new local message waited behind the whole held queue
    (found by tests/bench/exhaustion.py: hours with 100,000 held)."""
    held = 480  # 30 turns: 30 s at one turn per tick
    t = tern_factory(hold_outbound="yes", spool_sync="no").start()
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        for i in range(held):
            c.sendmail("owner@localhost", ["x@far.test"], body(f"held {i}"))
    assert len(t.queued()) == held
    assert t.stop() == 0
    start(t)
    started = time.monotonic()
    send(t, ["fresh@localhost"], body("new mail"))
    wait_for(lambda: t.maildir("fresh"), timeout=30, what="local delivery")
    assert time.monotonic() - started < 5, "new mail waited behind the recovered queue"
    assert len(t.queued()) == held


def test_the_listener_answers_while_a_big_queue_is_recovered(tern_factory):
    """Start-up recovery checks each queued message (envelope, trailer,
    state file) a bounded number per loop turn while the daemon serves
    (issue 16, workload 4: with 100,000 queued the port used to stay silent
    for seconds, until every file had been read). The first banner comes
    before recovery is done, nothing is lost, and a damaged file is still
    set aside."""
    n = 20000
    t = tern_factory(hold_outbound="yes", spool_sync="no").start()
    send(t, ["x@far.test"], body("held"))
    wait_for(lambda: len(t.queued()) == 1, what="the held message")
    assert t.stop() == 0
    msg = t.spool / "msg"
    first = t.queued()[0]
    data = (msg / first).read_bytes()
    base = int(first, 16)
    name = (lambda i: f"{i:016x}") if first == first.lower() else (lambda i: f"{i:016X}")
    for i in range(1, n):
        (msg / name(base + i)).write_bytes(data)
    damaged = name(base + n)
    (msg / damaged).write_bytes(data[:-5])  # no valid trailer
    starts = t.log_text().count("started: ")
    with open(t.log, "ab") as logf:
        t.proc = subprocess.Popen([TERN_BIN, "-c", str(t.conf)], stdout=logf, stderr=logf)
    deadline = time.monotonic() + 30
    banner = b""
    while time.monotonic() < deadline and not banner.startswith(b"220"):
        try:
            with socket.create_connection(("127.0.0.1", t.port), timeout=30) as s:
                banner = s.recv(512)
        except OSError:
            time.sleep(0.01)
    assert banner.startswith(b"220")
    assert t.log_text().count("started: ") == starts, "the banner waited for the whole recovery"
    wait_for(lambda: t.log_text().count("started: ") > starts, timeout=120, what="recovery")
    assert f"started: {n} queued message(s)" in t.log_text()
    assert (t.spool / "corrupt" / damaged).exists()
    assert len(t.queued()) == n
    assert t.stop() == 0
