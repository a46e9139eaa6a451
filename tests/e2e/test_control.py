"""The control socket (issue 13, item 4: one writer per file): `tern queue
delete/flush/hold/release` go to the running daemon through SPOOL/control;
with no daemon they work on the spool under the spool lock."""

import os
import re
import socket
import stat
import threading
import time

from harness import Sink, wait_for
from test_local import sendmail

LOG_PROBLEM = re.compile(r"\b(WARN|ERROR)\b")


def problems(t):
    """Warnings and errors, except the deferrals the tests' sink causes on
    purpose (451 mailbox busy keeps a message queued)."""
    return [
        l
        for l in t.log_text().splitlines()
        if LOG_PROBLEM.search(l) and "status=deferred" not in l
    ]


def queue(t, *args):
    r = t.cmd("queue", *args)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def mailq(t):
    return t.cmd("mailq").stdout.decode()


def control_request(t, data, read_timeout=10):
    """Raw bytes to the control socket, then end of input; returns what the
    daemon answered."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(read_timeout)
    s.connect(str(t.spool / "control"))
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass
    out = b""
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            out += b
    except ConnectionResetError:
        pass
    s.close()
    return out


def queued_remote(t, sink, rcpt="far@remote.test", subject="q"):
    r = sendmail(t, ["-i", rcpt], f"Subject: {subject}\n\nbody\n".encode())
    assert r.returncode == 0, r.stderr
    wait_for(lambda: t.queued(), what="queued")
    return t.queued()[-1]


def deferring_sink():
    """A sink that defers every RCPT until `sink.accept` is set, counting
    the MAIL commands (one per attempt)."""
    sink = Sink()
    sink.accept = False
    sink.attempts = 0

    def mail(txn, arg):
        sink.attempts += 1
        return "250 2.1.0 ok"

    def rcpt(txn, arg):
        return "250 2.1.5 ok" if sink.accept else "451 4.2.0 mailbox busy"

    sink.script.update(mail=mail, rcpt=rcpt)
    return sink


def deferred(t, qid):
    wait_for(lambda: "deferred" in mailq(t) and "attempts: 1" in queue(t, "show", qid)[1],
             what="the first attempt deferred")


def delete_retrying_busy(t, qid):
    """A delete that meets a running attempt is refused (busy, exit 75):
    try again, as the message says."""
    for _ in range(50):
        code, out, err = queue(t, "delete", qid)
        if code != 75 or "busy" not in err:
            return code, out, err
        time.sleep(0.1)
    raise AssertionError("always busy")


def test_queue_delete_while_the_daemon_runs_leaves_no_error_in_the_log(tern_factory):
    """The issue's acceptance test: the message is gone from mailq, never
    delivered, and the daemon logs no error or warning (it used to log
    `cannot read queue file` at the next retry)."""
    sink = deferring_sink()
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         retry_schedule="1s").start()
        qid = queued_remote(t, sink)
        deferred(t, qid)
        code, out, err = delete_retrying_busy(t, qid)
        assert code == 0, err
        assert out.strip() == f"deleted {qid}", out
        assert t.queued() == [] and not (t.spool / "state" / qid).exists()
        assert "Mail queue is empty" in mailq(t)
        # The daemon did it (one writer), and says so.
        wait_for(lambda: f"{qid}: deleted (tern queue delete)" in t.log_text(), what="delete logged")
        # Retries would have come every second; a flush asks for one now.
        sink.accept = True
        attempts = sink.attempts
        assert queue(t, "flush")[0] == 0
        time.sleep(2.5)
        assert sink.messages == [] and sink.attempts == attempts, "a deleted message was attempted"
        assert problems(t) == [], t.log_text()
        assert "cannot read queue file" not in t.log_text()
        # Deleting it again: no such message (exit 66), still nothing logged.
        code, _, err = queue(t, "delete", qid)
        assert code == 66 and f"no-such-message {qid}" in err, err
        assert problems(t) == []
        # The daemon serves on (the message may be delivered at once, over
        # the connection kept from the last attempt: not waited for in mailq).
        r = sendmail(t, ["-i", "far@remote.test"], b"Subject: after\n\nbody\n")
        assert r.returncode == 0, r.stderr
        wait_for(lambda: sink.messages, what="the next message delivered")
    finally:
        sink.close()


def test_delete_refuses_a_message_whose_attempt_is_running(tern_factory):
    gate = threading.Event()
    sink = Sink({"data": lambda txn, arg: (gate.wait(20), "354 go ahead")[1]})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        qid = queued_remote(t, sink)
        wait_for(lambda: sink.sessions, what="the attempt started")
        code, _, err = queue(t, "delete", qid)
        assert code == 75 and f"busy {qid}" in err and "try again" in err, (code, err)
        gate.set()
        wait_for(lambda: sink.messages, what="the attempt finished")
        wait_for(lambda: t.queued() == [], what="the message removed after delivery")
        assert problems(t) == [], t.log_text()
    finally:
        gate.set()
        sink.close()


def test_queue_delete_with_no_daemon_running(tern_factory):
    t = tern_factory(hold_outbound="yes").start()
    r = sendmail(t, ["-i", "far@remote.test"], b"Subject: held\n\nx\n")
    assert r.returncode == 0
    qid = wait_for(lambda: t.queued(), what="queued")[0]
    assert t.stop() == 0
    assert not (t.spool / "control").exists(), "the socket is removed at exit"
    code, out, err = queue(t, "hold", qid)
    assert code == 0 and out.strip() == f"held {qid}", err
    assert (t.spool / "hold" / qid).exists()
    code, out, err = queue(t, "delete", qid)
    assert code == 0 and out.strip() == f"deleted {qid}", err
    assert t.queued() == [] and not (t.spool / "hold" / qid).exists()
    code, _, err = queue(t, "delete", qid)
    assert code == 66 and "no-such-message" in err
    # Flush needs a daemon.
    code, _, err = queue(t, "flush")
    assert code == 75 and "not running" in err
    t.start()
    wait_for(lambda: "started: 0 queued message(s)" in t.log_text(), what="start-up")
    assert problems(t) == [], t.log_text()


def test_a_second_daemon_on_the_same_spool_is_refused(tern_factory):
    """The spool lock is what makes one writer: a daemon does not start on
    a spool another daemon holds."""
    t = tern_factory().start()
    other = tern_factory(spool_dir=str(t.spool))
    r = other.cmd()  # a second daemon, same spool, own pid file and port
    assert r.returncode == 75 and b"locked" in r.stderr, r.stderr
    # The first one is unharmed and still answers.
    assert queue(t, "flush")[0] == 0


def test_flush_delivers_a_deferred_message_at_once(tern_factory):
    sink = deferring_sink()
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         retry_schedule="1h").start()
        qid = queued_remote(t, sink)
        deferred(t, qid)
        sink.accept = True
        time.sleep(1)
        assert sink.messages == [], "retried before the hour"
        code, out, err = queue(t, "flush")
        assert code == 0 and out.strip() == "flushing", err
        wait_for(lambda: sink.messages, timeout=5, what="delivery after the flush")
        wait_for(lambda: t.queued() == [], what="removed")
        # One message: `flush ID`.
        sink.accept = False
        qid = queued_remote(t, sink, subject="second")
        deferred(t, qid)
        sink.accept = True
        code, out, err = queue(t, "flush", qid)
        assert code == 0 and out.strip() == f"flushing {qid}", err
        wait_for(lambda: len(sink.messages) == 2, timeout=5, what="delivery after flush ID")
        code, _, err = queue(t, "flush", qid)
        assert code == 66 and "no-such-message" in err
    finally:
        sink.close()


def test_hold_and_release(tern_factory):
    sink = deferring_sink()
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         retry_schedule="1s").start()
        qid = queued_remote(t, sink)
        deferred(t, qid)
        code, out, err = queue(t, "hold", qid)
        assert code == 0 and out.strip() == f"held {qid}", err
        assert (t.spool / "hold" / qid).exists()
        q = mailq(t)
        assert f"(on hold: tern queue release {qid})" in q and "far@remote.test (held" in q, q
        assert f"on hold: tern queue release {qid}" in queue(t, "show", qid)[1]
        # Never attempted while held: not by the 1 s retry, not by a flush.
        time.sleep(1.5)  # a running attempt, if any, ends
        sink.accept = True
        attempts = sink.attempts
        assert queue(t, "flush")[0] == 0
        code, _, err = queue(t, "flush", qid)
        assert code == 65 and f"held {qid}" in err and "release it first" in err, err
        time.sleep(2.5)
        assert sink.attempts == attempts and sink.messages == []
        # Held across a restart too.
        assert t.stop() == 0
        t.start()
        wait_for(lambda: "started: 0 queued message(s), 1 on hold" in t.log_text(), what="restart")
        assert queue(t, "flush")[0] == 0
        time.sleep(1.5)
        assert sink.attempts == attempts and sink.messages == []
        # Released: attempted at once.
        code, out, err = queue(t, "release", qid)
        assert code == 0 and out.strip() == f"released {qid}", err
        wait_for(lambda: sink.messages, timeout=5, what="delivery after release")
        wait_for(lambda: t.queued() == [], what="removed")
        assert not (t.spool / "hold" / qid).exists()
        code, _, err = queue(t, "release", "0123456789ABCDEF")
        assert code == 66, err
        assert problems(t) == [], t.log_text()
    finally:
        sink.close()


def test_release_of_a_message_not_on_hold_and_flush_id_under_hold_outbound(tern_factory):
    sink = Sink()
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         hold_outbound="yes").start()
        r = sendmail(t, ["-i", "far@remote.test"], b"Subject: x\n\nx\n")
        assert r.returncode == 0
        qid = wait_for(lambda: t.queued(), what="queued")[0]
        code, _, err = queue(t, "release", qid)
        assert code == 65 and f"not-held {qid}" in err, err
        # hold_outbound (the global key) is untouched: mailq says why it waits.
        wait_for(lambda: "held: hold_outbound = yes" in mailq(t), what="held by hold_outbound")
        time.sleep(0.5)
        assert sink.messages == []
        # `flush ID` sends that one message, as `flush` sends them all.
        code, out, err = queue(t, "flush", qid)
        assert code == 0 and out.strip() == f"flushing {qid}", err
        wait_for(lambda: sink.messages, timeout=5, what="delivery after flush ID")
        assert problems(t) == [], t.log_text()
    finally:
        sink.close()


def test_garbage_and_oversized_requests_get_an_error_and_smtp_goes_on(tern):
    assert control_request(tern, b"x" * 100000) == b"error bad-request: request line too long\n"
    assert control_request(tern, b"rm -rf /\n").startswith(b"error bad-request: unknown command")
    assert control_request(tern, b"delete ../../etc/passwd\n") == \
        b"error bad-request: not a queue ID (16 hex digits)\n"
    assert control_request(tern, b"flush\x00\n") == b"error bad-request: request is not printable ASCII\n"
    assert control_request(tern, b"hold") == \
        b"error bad-request: connection closed before a whole request line\n"
    # More connections than the daemon serves at once, left idle: SMTP and
    # new control requests still work.
    idle = []
    for _ in range(12):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(tern.spool / "control"))
        try:
            s.sendall(b"fl")
        except (BrokenPipeError, ConnectionResetError):
            pass  # one over the limit, closed at accept (as it should be)
        idle.append(s)
    r = sendmail(tern, ["-i", "after@localhost"], b"Subject: x\n\nstill serving\n")
    assert r.returncode == 0
    wait_for(lambda: tern.maildir("after"), what="delivery while control clients idle")
    with socket.create_connection(("127.0.0.1", tern.port), timeout=5) as c:
        assert c.recv(512).startswith(b"220 ")
    for s in idle:
        s.close()
    wait_for(lambda: control_request(tern, b"flush\n") == b"ok flushing\n", what="control serves again")
    assert tern.proc.poll() is None


def test_a_silent_client_is_timed_out(tern):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(str(tern.spool / "control"))
    t0 = time.monotonic()
    reply = s.recv(512)
    assert reply == b"error bad-request: timeout waiting for the request\n"
    assert 8 <= time.monotonic() - t0 <= 15
    s.close()


def test_the_socket_is_not_world_accessible_and_replaces_a_stale_one(tern_factory):
    t = tern_factory()
    t.spool.mkdir(parents=True)
    # A stale socket left by a daemon that was killed.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(t.spool / "control"))
    stale.close()
    t.start()
    wait_for(lambda: "replacing the stale socket" in t.log_text(), what="stale socket replaced")
    st = os.lstat(t.spool / "control")
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert st.st_uid == os.geteuid()
    assert stat.S_IMODE(os.lstat(t.spool / "lock").st_mode) == 0o600
    assert queue(t, "flush")[0] == 0
    assert t.stop() == 0
    assert not (t.spool / "control").exists()


def test_a_user_without_access_cannot_use_the_socket(tern):
    """Run as nobody: connect is refused by the socket's mode."""
    if os.geteuid() != 0:
        import pytest
        pytest.fail("needs root to switch to nobody")
    import pwd
    nobody = pwd.getpwnam("nobody")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(tern.spool / "control"))
            except PermissionError:
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, "nobody could connect to the control socket"
