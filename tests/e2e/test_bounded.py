"""Bounded work per turn (issue 13 item 3): a large message to many local
users is delivered in steps of `LOCAL_BYTES_PER_TURN` octets, and every
mailbox still gets a byte-identical copy (Maildir and mbox). Correctness,
not timing: tests/bench/stall.py measures the stall."""

import re
import smtplib
import socket

import pytest

from harness import wait_for

USERS = [f"user{i:02d}" for i in range(1, 21)]


def big_message(size):
    """CRLF lines, some starting with `From ` (mbox escapes them), one
    long line; no line starts with a dot."""
    head = (b"From: sender@localhost\r\nTo: many@localhost\r\n"
            b"Subject: ten megabytes\r\nMessage-ID: <big@localhost>\r\n\r\n")
    chunks = [head]
    n = len(head)
    i = 0
    while n < size:
        if i % 1000 == 0:
            line = b"From the middle of the body " + str(i).encode() + b"\r\n"
        elif i % 777 == 0:
            line = b"z" * 998 + b"\r\n"
        else:
            line = b"line %08d abcdefghijklmnopqrstuvwxyz0123456789\r\n" % i
        chunks.append(line)
        n += len(line)
        i += 1
    return b"".join(chunks)


def noop_answers(port):
    """A NOOP on a second connection is answered while delivery runs."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"NOOP\r\n")
        assert f.readline().startswith(b"250")
        s.sendall(b"QUIT\r\n")


@pytest.mark.parametrize("fmt", ["maildir", "mbox"])
def test_ten_megabytes_to_many_local_users_byte_identical(tern_factory, fmt):
    t = tern_factory(local_delivery=fmt, max_message_size=20 * 1024 * 1024,
                     log_level="info").start()
    data = big_message(10 * 1024 * 1024)
    with smtplib.SMTP("127.0.0.1", t.port, timeout=60) as c:
        refused = c.sendmail("sender@localhost", [f"{u}@localhost" for u in USERS], data)
        assert refused == {}
    noop_answers(t.port)
    # The queue file goes once every copy is durable in its mailbox.
    wait_for(lambda: not t.queued(), timeout=120, what="all local deliveries")
    body = data.replace(b"\r\n", b"\n")
    for u in USERS:
        if fmt == "maildir":
            copies = t.maildir(u)
            assert len(copies) == 1, u
            got = copies[0]
            assert not list((t.mail / u / "tmp").iterdir()), "no file left in tmp/"
        else:
            got = (t.mail / u).read_bytes()
            first, rest = got.split(b"\n", 1)
            assert re.fullmatch(rb"From sender@localhost \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}", first)
            assert rest.endswith(b"\n\n") and got.count(b"\nFrom sender@localhost ") == 0
            got = rest[:-1]  # the closing empty line
            # mboxrd: a body line starting with `From ` gained a `>`.
            got = got.replace(b"\n>From the middle", b"\nFrom the middle")
        want_head = b"Return-Path: <sender@localhost>\nDelivered-To: %s@localhost\nReceived: " % u.encode()
        assert got.startswith(want_head), got[:200]
        # Everything after tern's Received: field is the message as sent.
        received_end = got.index(b"\nFrom: sender@localhost\n") + 1
        assert got[received_end:] == body, f"{u}: content differs"
    log = t.log_text()
    assert log.count("status=sent") == len(USERS)
    # Idle again: the loop sleeps (no zero-timeout polling left armed).
    assert cpu_seconds(t.proc.pid, 1.0) < 0.2


def cpu_seconds(pid, interval):
    """CPU time (user + system) the process used during `interval`."""
    import os
    import time

    def ticks():
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    before = ticks()
    time.sleep(interval)
    return (ticks() - before) / os.sysconf("SC_CLK_TCK")


def test_auth_is_verified_between_turns_for_many_clients(tern_factory, tmp_path):
    """Several AUTHs arrive in the same turn: each is verified by the loop
    (one per turn) and answered on its own connection; a client that
    leaves before its verdict does not disturb the others."""
    import base64
    import subprocess

    from harness import TERN_BIN

    r = subprocess.run([TERN_BIN, "passwd", "joe"], input=b"s3cret pass\n",
                       capture_output=True, timeout=10)
    assert r.returncode == 0, r.stderr
    users = tmp_path / "users"
    users.write_text(r.stdout.decode())
    t = tern_factory(users_file=users, allow_plaintext_auth="yes",
                     relay_networks="10.255.0.0/16").start()

    def session():
        s = socket.create_connection(("127.0.0.1", t.port), timeout=20)
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"EHLO c.test\r\n")
        while True:
            line = f.readline()
            if line[3:4] == b" ":
                break
        return s, f

    good = base64.b64encode(b"\0joe\0s3cret pass")
    bad = base64.b64encode(b"\0joe\0wrong")
    conns = [session() for _ in range(6)]
    leaver, _ = session()
    # All AUTHs go out before any answer is read; the good ones pipeline
    # a MAIL behind the AUTH.
    leaver.sendall(b"AUTH PLAIN " + good + b"\r\n")
    leaver.close()
    for i, (s, _) in enumerate(conns):
        cred = bad if i == 0 else good
        s.sendall(b"AUTH PLAIN " + cred + b"\r\nMAIL FROM:<joe@lan.test>\r\n")
    for i, (s, f) in enumerate(conns):
        first = f.readline()
        if i == 0:
            assert first.startswith(b"535"), first
        else:
            assert first.startswith(b"235"), first
            assert f.readline().startswith(b"250"), "the pipelined MAIL"
        s.close()
    assert t.proc.poll() is None
    assert t.log_text().count("auth: joe authenticated") >= 5


def test_large_sendmail_drops_are_imported_in_steps_byte_identical(tern_factory):
    """Drops written while the daemon is down (one large, several small)
    are imported a bounded amount per turn after start: each arrives
    whole, with its content unchanged, and every drop file is gone."""
    import subprocess

    from harness import TERN_BIN

    t = tern_factory(max_message_size=20 * 1024 * 1024)
    big = big_message(4 * 1024 * 1024).replace(b"\r\n", b"\n")
    drops = [("big", big)] + [(f"small{i}", b"Subject: small %d\n\nhello %d\n" % (i, i))
                              for i in range(5)]
    for user, data in drops:
        r = subprocess.run([TERN_BIN, "-c", str(t.conf), "sendmail", "-i", "-f", "cron@mx.test",
                            user], input=data, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
    assert len([p for p in (t.spool / "drop").iterdir() if not p.name.startswith(".")]) == len(drops)
    t.start()
    for user, data in drops:
        got = wait_for(lambda: t.maildir(user), timeout=60, what=f"delivery to {user}")
        assert len(got) == 1
        m = got[0]
        assert m.startswith(b"Return-Path: <cron@mx.test>\nDelivered-To: %s@mx.test\nReceived: by mx.test (tern sendmail, uid " % user.encode())
        assert m.endswith(data), user
    wait_for(lambda: not [p for p in (t.spool / "drop").iterdir() if not p.name.startswith(".")],
             what="drops removed")
    assert not list((t.spool / "corrupt").glob("*")) if (t.spool / "corrupt").exists() else True
