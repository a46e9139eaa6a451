"""The harness's own loopback peers: a server a test started must not
outlive the test on a descriptor number the next test reuses.

The flake this guards against: test_outcomes.py's port-465 test closed its
listening socket under a thread blocked in accept(). The thread stayed
blocked on the old socket; the next test's Sink took the freed descriptor
number; when the blocked call was interrupted and restarted (the kernel
restarts it with the same number: seen under strace, and now and then
without it on a loaded machine) it accepted tern's connection to that Sink
and closed it, and tern read end-of-stream before any greeting ("451 4.4.2
connection lost" instead of the Sink's reply). No tern here: the peers
alone.
"""

import signal
import socket
import threading
import time


from harness import FakeDns, Sink, close_served, wait_for


def _listener():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)
    return s


def _accept_forever(lsock, got):
    """The pattern of a silent server: accept and keep, until the socket fails."""
    while True:
        try:
            c, _ = lsock.accept()
        except OSError:
            return
        got.append(c)


def _restart_blocked_call(thread):
    """Interrupts `thread`'s blocked system call with a signal whose handler
    asks for a restart (SA_RESTART), as a ptrace stop or a freeze does: the
    kernel restarts the call with the descriptor number it was given."""
    old = signal.signal(signal.SIGUSR1, lambda *_: None)
    signal.siginterrupt(signal.SIGUSR1, False)
    try:
        if thread.is_alive():
            signal.pthread_kill(thread.ident, signal.SIGUSR1)
        time.sleep(0.2)
    finally:
        signal.signal(signal.SIGUSR1, old)


def _stale_accept(close):
    """A silent server's accept thread whose socket is closed with
    `close`; returns the thread, the list it keeps what it accepts in, and
    the closed socket's descriptor number."""
    old, got = _listener(), []
    th = threading.Thread(target=_accept_forever, args=(old, got), daemon=True)
    th.start()
    time.sleep(0.1)  # blocked in accept()
    number = old.fileno()
    close(old, th)
    return th, got, number


def test_close_served_ends_the_thread_before_the_number_is_reused():
    """The same with close_served: the thread is gone before the number is
    free, and the next test's Sink greets its client."""
    th, got, number = _stale_accept(close_served)
    assert not th.is_alive()
    sink = Sink()
    try:
        _restart_blocked_call(th)
        with socket.create_connection(("127.0.0.1", sink.port), timeout=5) as c:
            assert c.recv(100).startswith(b"220 ")
        assert got == [] and sink.sessions == 1
    finally:
        sink.close()


def test_fake_dns_close_ends_its_thread():
    """FakeDns's thread waits in recvfrom(): closing under it would leave
    it to read, after a restart, whatever socket takes the number next
    (bytes of the next test's SMTP session, say)."""
    dns = FakeDns({("a.test", "A"): ["127.0.0.1"]})
    thread = dns.thread
    dns.close()
    wait_for(lambda: not thread.is_alive(), timeout=5, what="FakeDns thread ended")


def test_wait_for_looks_at_least_once_when_the_clock_jumps(monkeypatch):
    """The project VM is sometimes paused and resumed ("virtual machine
    fork" in its kernel log); a test's clock then jumps past its deadline
    between computing it and the first look. A release e2e run failed that
    way: "timed out waiting for start-up recovery" with "started:" in the
    log. wait_for must still ask, and return what it finds."""
    import harness

    real = time.monotonic
    calls = []

    def jumping():
        calls.append(1)
        # The first call sets the deadline; every later one is 10 minutes on.
        return real() + (600 if len(calls) > 1 else 0)

    monkeypatch.setattr(harness.time, "monotonic", jumping)
    assert wait_for(lambda: "started", timeout=10) == "started"
    # And a condition that stays false still times out, after one look.
    looks = []
    calls.clear()
    try:
        wait_for(lambda: looks.append(1), timeout=10, what="never")
    except TimeoutError as e:
        assert "never" in str(e)
    else:
        raise AssertionError("wait_for returned on a false condition")
    assert len(looks) == 1
