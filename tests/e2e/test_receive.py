"""Receive, spool and deliver locally: the real binary on loopback."""

import signal
import smtplib
import socket
import subprocess
import time
from email.message import EmailMessage

from harness import TERN_BIN, wait_for


def dialog(port, lines, read_greeting=True):
    """Sends raw lines and returns everything the server said."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    out = b""
    if read_greeting:
        out += s.recv(4096)
    for l in lines:
        s.sendall(l)
        time.sleep(0.05)
    s.shutdown(socket.SHUT_WR)
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
    s.close()
    return out.decode(errors="replace")


def test_smtplib_delivers_to_maildir_byte_identical(tern):
    body = "Line one\r\n.leading dot\r\nUTF-8 é\r\n" + "x" * 990 + "\r\n"
    raw = ("From: a@remote.test\r\nTo: joe@localhost\r\nSubject: hello\r\n\r\n" + body).encode()
    with smtplib.SMTP("127.0.0.1", tern.port) as c:
        code, resp = c.ehlo("client.test")
        assert code == 250 and b"PIPELINING" in resp and b"8BITMIME" in resp
        c.sendmail("a@remote.test", ["joe@localhost"], raw)
    msgs = wait_for(lambda: tern.maildir("joe"), what="maildir delivery")
    assert len(msgs) == 1
    m = msgs[0]
    assert m.startswith(b"Return-Path: <a@remote.test>\nDelivered-To: joe@localhost\nReceived: from client.test ([127.0.0.1])\n\tby mx.test (tern) with ESMTP id ")
    assert m.endswith(raw.replace(b"\r\n", b"\n")), m[-200:]  # mailboxes hold LF
    # The file is in new/ a turn before its entry is synced and the
    # delivery logged.
    wait_for(lambda: "status=sent" in tern.log_text(), what="the delivery logged")
    log = tern.log_text()
    assert "from=<a@remote.test> size=" in log
    assert "to=<joe@localhost> mailbox=joe relay=local" in log


def test_send_message_with_pipelining_many_recipients(tern):
    msg = EmailMessage()
    msg["From"] = "x@remote.test"
    msg["To"] = "a@localhost, b@localhost"
    msg["Subject"] = "pipelined"
    msg.set_content("hi there\n")
    with smtplib.SMTP("127.0.0.1", tern.port) as c:
        refused = c.send_message(msg, to_addrs=["a@localhost", "b@localhost", "c@mx.test"])
        assert refused == {}
    for user in ("a", "b", "c"):
        got = wait_for(lambda: tern.maildir(user), what=f"mail for {user}")
        assert b"Subject: pipelined" in got[0]


def test_swaks_interop(tern):
    r = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{tern.port}", "--to", "user@localhost",
         "--from", "s@remote.test", "--body", "swaks body line", "--h-Subject", "swaks test"],
        capture_output=True, timeout=30,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    got = wait_for(lambda: tern.maildir("user"), what="swaks delivery")
    assert b"swaks body line" in got[0]
    assert b"Subject: swaks test" in got[0]


def test_relay_denied_from_untrusted_network(tern_factory):
    t = tern_factory(relay_networks="10.0.0.0/8").start()
    out = dialog(t.port, [b"EHLO c\r\n", b"MAIL FROM:<a@x.test>\r\n", b"RCPT TO:<b@elsewhere.test>\r\n",
                          b"RCPT TO:<ok@localhost>\r\n", b"QUIT\r\n"])
    assert "554 5.7.1 Relay access denied" in out
    assert "250 2.1.5" in out


def test_relay_from_trusted_network_is_queued(tern_factory):
    t = tern_factory(hold_outbound="yes").start()
    with smtplib.SMTP("127.0.0.1", t.port) as c:
        c.sendmail("a@x.test", ["b@elsewhere.test"], b"Subject: out\r\n\r\nbody\r\n")
    q = wait_for(lambda: (lambda out: out if "held" in out else None)(t.cmd("mailq").stdout.decode()),
                 what="the message to be held")
    assert "b@elsewhere.test (held: hold_outbound = yes)" in q, q


def test_user_unknown_with_passwd_lookup(tern_factory):
    t = tern_factory(local_recipients="passwd").start()
    out = dialog(t.port, [b"EHLO c\r\n", b"MAIL FROM:<a@x.test>\r\n",
                          b"RCPT TO:<no-such-user-xyz@localhost>\r\n", b"RCPT TO:<root@localhost>\r\n",
                          b"QUIT\r\n"])
    assert "550 5.1.1" in out
    assert out.count("250 2.1.5") == 1


def test_limits_answered_and_session_survives(tern_factory):
    t = tern_factory(max_message_size="2K", max_recipients="2").start()
    big = b"x" * 1000 + b"\r\n"
    out = dialog(t.port, [b"EHLO c\r\n", b"MAIL FROM:<a@x.test>\r\n", b"RCPT TO:<a@localhost>\r\n",
                          b"RCPT TO:<b@localhost>\r\n", b"RCPT TO:<c@localhost>\r\n", b"DATA\r\n",
                          big * 3 + b".\r\n", b"NOOP " + b"y" * 1200 + b"\r\n", b"NOOP\r\n", b"QUIT\r\n"])
    assert "452 4.5.3" in out
    assert "552 5.3.4" in out
    assert "500 5.5.2" in out
    assert out.rstrip().endswith("221 2.0.0 mx.test closing connection")
    assert t.maildir("a") == []


def test_smuggling_is_content(tern):
    out = dialog(tern.port, [b"EHLO c\r\n", b"MAIL FROM:<a@x.test>\r\n", b"RCPT TO:<v@localhost>\r\n",
                             b"DATA\r\n", b"Subject: s\r\n\r\nbefore\n.\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<w@localhost>\r\nDATA\r\nevil\r\n.\r\n",
                             b"QUIT\r\n"])
    assert out.count("Ok: queued as") == 1, out
    got = wait_for(lambda: tern.maildir("v"), what="delivery")
    assert b"MAIL FROM:<evil@x.test>" in got[0]
    time.sleep(0.3)
    assert tern.maildir("w") == []


def test_max_connections_per_ip_and_idle_connections(tern_factory):
    t = tern_factory(max_connections_per_ip="3", max_connections="500").start()
    socks = [socket.create_connection(("127.0.0.1", t.port)) for _ in range(3)]
    for s in socks:
        assert s.recv(100).startswith(b"220")
    extra = socket.create_connection(("127.0.0.1", t.port))
    assert extra.recv(100).startswith(b"421 4.7.0")
    for s in socks + [extra]:
        s.close()


def test_500_idle_connections_do_not_stop_a_new_client(tern_factory):
    t = tern_factory(max_connections="1000", max_connections_per_ip="1000").start()
    idle = []
    for _ in range(500):
        s = socket.create_connection(("127.0.0.1", t.port))
        idle.append(s)
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail("a@x.test", ["late@localhost"], b"Subject: late\r\n\r\nstill served\r\n")
    got = wait_for(lambda: t.maildir("late"), what="delivery with 500 idle")
    assert b"still served" in got[0]
    for s in idle:
        s.close()


def test_kill9_during_stream_loses_nothing_acknowledged(tern_factory):
    """Four clients stream messages; tern is SIGKILLed mid-stream. After a
    restart every message that got its 250 is still queued, and recovery
    leaves no temp file behind."""
    import threading

    t = tern_factory(hold_outbound="yes").start()
    acked = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n):
        try:
            c = smtplib.SMTP("127.0.0.1", t.port, timeout=5)
            for i in range(10000):
                if stop.is_set():
                    break
                rcpt = f"c{n}m{i}@far.test"
                c.sendmail("a@x.test", [rcpt], f"Subject: {rcpt}\r\n\r\n".encode() + (b"z" * 75 + b"\r\n") * 40)
                with lock:
                    acked.append(rcpt)
        except Exception:
            pass

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for th in threads:
        th.start()
    wait_for(lambda: len(acked) >= 60, what="some acknowledged messages")
    t.kill9()
    stop.set()
    for th in threads:
        th.join(10)
    t.start()
    q = t.cmd("mailq").stdout.decode()
    lost = [r for r in acked if r not in q]
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {lost[:3]}"
    assert list((t.spool / "tmp").iterdir()) == []


def test_sigterm_is_graceful(tern_factory):
    t = tern_factory().start()
    s = socket.create_connection(("127.0.0.1", t.port))
    assert s.recv(100).startswith(b"220")
    t.send(signal.SIGTERM)
    data = s.recv(200)
    assert data.startswith(b"421"), data
    assert t.stop() == 0
    assert not (t.dir / "tern.pid").exists()


def test_check_config_reports_line_numbers(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("hostname = ok.test\nbogus_key = 1\nmax_recipients = lots\n")
    r = subprocess.run([TERN_BIN, "-c", str(conf), "check-config"], capture_output=True, timeout=10)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert f"{conf}:2:" in err and f"{conf}:3:" in err, err


def test_restart_delivers_mail_queued_before(tern_factory):
    t = tern_factory().start()
    t.stop()
    # Mail dropped by sendmail while the daemon is down is picked up at start.
    r = t.cmd("sendmail", "-i", "offline@localhost", input=b"Subject: while down\n\nqueued offline\n")
    assert r.returncode == 0, r.stderr
    t.start()
    got = wait_for(lambda: t.maildir("offline"), what="drop pickup")
    assert b"queued offline\n" in got[0]
    assert b"Date: " in got[0] and b"Message-ID: <" in got[0] and b"From: " in got[0]
