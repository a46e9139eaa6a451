"""`local_delivery = lmtp` (issue 15 part 1): local mail goes to an LMTP
server (RFC 2033) instead of Maildir/mbox.

(a) A real Dovecot LMTP server (Debian dovecot-core + dovecot-lmtpd, which
`make test-deps` installs), started here with its own minimal config: no
system config, base_dir, log and mail in a temporary directory, an LMTP
listener on a unix socket, static userdb. Dovecot refuses to deliver as
uid 0 ("userdb returned 0 as uid", hard-coded, whatever first_valid_uid
says), so when the tests run as root the mail user is `nobody` and its
maildir root a directory under /tmp that `nobody` can reach (pytest's
temporary directories are 0700 root); `default_internal_user` and
`default_login_user` are root so that no other account is needed.

(b) A scripted LMTP sink on a unix socket that answers each recipient
after DATA by a script (250 / 450 then 250 / 550): tern delivers, defers
only the 450 one and delivers it at the retry, and bounces the 550 one
with a DSN that names the server's text (the DSN itself goes to the local
sender through LMTP too).

Everything is local: unix sockets and 127.0.0.1; dns_servers points at a
closed loopback port."""

import os
import pwd
import shutil
import signal
import smtplib
import socketserver
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from harness import free_port, wait_for

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def send(t, sender, rcpts, body):
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail(sender, rcpts, body)


def unix(text):
    """A message as stored with LF line ends (Dovecot's maildir)."""
    return text.replace(b"\r\n", b"\n")


# --- (a) Dovecot -------------------------------------------------------------


class Dovecot:
    """A private Dovecot instance that only speaks LMTP on a unix socket."""

    def __init__(self):
        # Short (unix socket paths are limited to 108 bytes) and reachable
        # by the mail user.
        self.dir = Path(tempfile.mkdtemp(prefix="tern-lmtp-"))
        os.chmod(self.dir, 0o755)
        if os.getuid() == 0:
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
        else:
            uid, gid = os.getuid(), os.getgid()
        self.mail = self.dir / "mail"
        self.mail.mkdir()
        os.chown(self.mail, uid, gid)
        self.socket = self.dir / "lmtp.sock"
        self.port = free_port()
        self.log = self.dir / "dovecot.log"
        self.conf = self.dir / "dovecot.conf"
        user = pwd.getpwuid(os.getuid()).pw_name
        self.conf.write_text(f"""\
base_dir = {self.dir}/run
state_dir = {self.dir}/state
instance_name = tern-lmtp-{os.getpid()}-{self.dir.name}
log_path = {self.log}
protocols = lmtp
listen = 127.0.0.1
ssl = no
default_internal_user = {user}
default_login_user = {user}
first_valid_uid = {min(uid, 500)}
mail_location = maildir:{self.mail}/%u
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={self.mail}/%u
}}
service lmtp {{
  unix_listener {self.socket} {{
    mode = 0666
  }}
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}
}}
""")
        (self.dir / "state").mkdir()
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr", "wb"),
        )
        try:
            wait_for(lambda: self.socket.exists() or self.proc.poll() is not None,
                     what="dovecot's LMTP socket")
        except TimeoutError:
            pass
        if not self.socket.exists():
            self.close()
            raise RuntimeError("dovecot did not start:\n" + self.logs())

    def logs(self):
        out = []
        for name in ("stderr", "dovecot.log"):
            p = self.dir / name
            if p.exists():
                out.append(p.read_text(errors="replace"))
        return "\n".join(out)

    def maildir(self, user):
        new = self.mail / user / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def dovecot(request):
    if not os.path.exists(DOVECOT):
        pytest.skip("dovecot is not installed (make test-deps installs dovecot-core, dovecot-lmtpd)")
    d = Dovecot()
    yield d
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed:
        print("--- dovecot log ---")
        print(d.logs()[-6000:])
    d.close()


def test_dovecot_lmtp_delivers_to_two_local_users(tern_factory, dovecot):
    t = tern_factory(local_delivery="lmtp", lmtp_target=f"unix:{dovecot.socket}")
    # bob is reached through an alias: the mailbox name is what goes to LMTP.
    (t.dir / "aliases").write_text("staff: bob\n")
    t.start()
    body = b"Subject: over lmtp\r\nFrom: Sender <sender@remote.test>\r\n\r\nline one\r\n.dot line\r\nlast\r\n"
    send(t, "sender@remote.test", ["ann@mx.test", "staff@mx.test"], body)
    for user in ("ann", "bob"):
        msgs = wait_for(lambda: dovecot.maildir(user), timeout=20, what=f"{user}'s mail in Dovecot")
        assert len(msgs) == 1, msgs
        m = msgs[0]
        # Exactly the message sent, after the headers Dovecot and tern add.
        assert m.endswith(unix(body)), m
        assert m.startswith(b"Return-Path: <sender@remote.test>\n"), m
        assert b"\nReceived: from " in m and b"by mx.test" in m, m
    # Nothing in tern's own mail_dir: LMTP took it.
    assert t.maildir("ann") == [] and t.maildir("bob") == []
    sent = wait_for(lambda: [l for l in t.log_text().splitlines() if "status=sent" in l][1:] and
                    [l for l in t.log_text().splitlines() if "status=sent" in l],
                    what="two status=sent lines")
    assert len(sent) == 2, sent
    log = t.log_text()
    assert all(f"relay=unix:{dovecot.socket}" in l for l in sent), sent
    # One LMTP session: both recipients in one transaction.
    assert "LHLO" in log
    assert t.queued() == [] or wait_for(lambda: t.queued() == [], what="queue empty")


def test_dovecot_lmtp_over_tcp_host_port(tern_factory, dovecot):
    t = tern_factory(local_delivery="lmtp", lmtp_target=f"127.0.0.1:{dovecot.port}").start()
    body = b"Subject: tcp\r\n\r\nover 127.0.0.1\r\n"
    send(t, "", ["carol@localhost"], body)
    m = wait_for(lambda: dovecot.maildir("carol"), timeout=20, what="carol's mail in Dovecot")[0]
    assert m.endswith(unix(body)), m
    assert m.startswith(b"Return-Path: <>\n"), m
    wait_for(lambda: f"relay=127.0.0.1[127.0.0.1]:{dovecot.port}" in t.log_text(),
             what="the status=sent line")


def test_check_config_lmtp(tern_factory):
    t = tern_factory(local_delivery="lmtp")
    r = t.cmd("check-config")
    assert r.returncode == 1
    assert "local_delivery = lmtp needs lmtp_target" in r.stderr.decode() + r.stdout.decode()
    t.settings["lmtp_target"] = "unix:relative/lmtp"
    t.write_config()
    r = t.cmd("check-config")
    out = r.stderr.decode() + r.stdout.decode()
    assert r.returncode == 1 and "must be absolute" in out, out
    t.settings["lmtp_target"] = "127.0.0.1:24"
    t.write_config()
    r = t.cmd("check-config")
    assert r.returncode == 0, r.stderr


# --- (b) a scripted LMTP sink ------------------------------------------------


class LmtpSink:
    """An LMTP server on a unix socket. `script` maps a recipient (as sent
    in RCPT) to the replies after DATA for its successive deliveries; the
    last one repeats; anyone else gets 250. Records every session's
    commands and every transaction."""

    def __init__(self, path, script):
        self.path = str(path)
        self.script = {k: list(v) for k, v in script.items()}
        self.sessions = []      # list of command lists
        self.transactions = []  # dicts: sender, rcpts, data, replies
        self.lock = threading.Lock()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                sink._session(self.rfile, self.wfile)

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(self.path, Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _after_data(self, rcpt):
        with self.lock:
            replies = self.script.get(rcpt)
            if not replies:
                return f"250 2.0.0 <{rcpt}> saved"
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def _session(self, rfile, wfile):
        commands = []
        with self.lock:
            self.sessions.append(commands)

        def reply(text):
            wfile.write(text.encode() + b"\r\n")
            wfile.flush()

        reply("220 sink.test LMTP ready")
        sender, rcpts = None, []
        while True:
            line = rfile.readline()
            if not line:
                return
            cmd = line.decode(errors="replace").rstrip("\r\n")
            commands.append(cmd)
            verb = cmd[:4].upper()
            if verb == "LHLO":
                reply("250-sink.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME")
            elif verb == "MAIL":
                sender = cmd.split("<", 1)[1].split(">", 1)[0]
                rcpts = []
                reply("250 2.1.0 ok")
            elif verb == "RCPT":
                rcpts.append(cmd.split("<", 1)[1].split(">", 1)[0])
                reply("250 2.1.5 ok")
            elif verb == "DATA":
                reply("354 go ahead")
                data = b""
                while True:
                    l = rfile.readline()
                    if not l or l == b".\r\n":
                        break
                    data += l[1:] if l.startswith(b"..") else l
                replies = [self._after_data(r) for r in rcpts]
                with self.lock:
                    self.transactions.append(
                        {"sender": sender, "rcpts": list(rcpts), "data": data, "replies": replies})
                for r in replies:
                    reply(r)
            elif verb == "RSET":
                reply("250 2.0.0 ok")
            elif verb == "QUIT":
                reply("221 2.0.0 bye")
                return
            else:
                reply("500 5.5.1 unknown command")

    def delivered_to(self, rcpt, sender=None):
        """Transactions in which `rcpt` got a 2xx after DATA."""
        out = []
        with self.lock:
            for tx in self.transactions:
                if sender is not None and tx["sender"] != sender:
                    continue
                for r, rep in zip(tx["rcpts"], tx["replies"]):
                    if r == rcpt and rep.startswith("2"):
                        out.append(tx)
        return out


def test_lmtp_per_recipient_replies_deliver_defer_and_bounce(tern_factory, tmp_path):
    sock = tmp_path / "lmtp.sock"
    sink = LmtpSink(sock, {
        "bob": ["450 4.2.1 <bob> mailbox busy, try later", "250 2.0.0 <bob> saved at last"],
        "cid": ["550 5.1.1 <cid> mailbox does not exist here"],
    })
    try:
        t = tern_factory(local_delivery="lmtp", lmtp_target=f"unix:{sock}",
                         retry_schedule="1s").start()
        body = b"Subject: three\r\n\r\nfor ann, bob and cid\r\n"
        send(t, "alice@mx.test", ["ann@mx.test", "bob@mx.test", "cid@mx.test"], body)
        # bob's retry delivers him; cid's bounce reaches alice (over LMTP).
        wait_for(lambda: sink.delivered_to("bob"), timeout=30, what="bob delivered at the retry")
        dsns = wait_for(lambda: sink.delivered_to("alice", sender=""), timeout=30,
                        what="the bounce to alice")
        first = sink.transactions[0]
        assert first["sender"] == "alice@mx.test"
        assert first["rcpts"] == ["ann", "bob", "cid"]
        assert first["data"].endswith(body)
        # The retry carries bob only; ann was never delivered twice.
        retries = [tx for tx in sink.transactions[1:] if tx["sender"] == "alice@mx.test"]
        assert [tx["rcpts"] for tx in retries] == [["bob"]], sink.transactions
        assert retries[0]["data"] == first["data"]
        assert len(sink.delivered_to("ann")) == 1
        assert len(sink.delivered_to("cid")) == 0
        # Every session spoke LMTP.
        assert all(s and s[0].startswith("LHLO ") for s in sink.sessions), sink.sessions
        # The DSN names cid and the server's words, not bob or ann.
        assert len(dsns) == 1
        dsn = dsns[0]["data"].decode(errors="replace")
        assert "mailbox does not exist here" in dsn, dsn
        assert "cid@mx.test" in dsn, dsn
        assert "Status: 5.1.1" in dsn, dsn
        assert "ann@mx.test" not in dsn and "bob@mx.test" not in dsn, dsn
        log = t.log_text()
        assert any("to=<bob" in l and "status=deferred" in l and "mailbox busy" in l
                   for l in log.splitlines()), log
        assert any("to=<cid" in l and "status=bounced" in l for l in log.splitlines()), log
        wait_for(lambda: t.queued() == [], timeout=20, what="the queue to empty")
    finally:
        sink.close()


def test_lmtp_server_down_defers_then_delivers(tern_factory, tmp_path):
    sock = tmp_path / "lmtp.sock"
    t = tern_factory(local_delivery="lmtp", lmtp_target=f"unix:{sock}",
                     retry_schedule="1s").start()
    send(t, "alice@remote.test", ["ann@mx.test"], b"Subject: later\r\n\r\nwaits\r\n")
    wait_for(lambda: "status=deferred" in t.log_text(), timeout=20, what="deferred while down")
    assert f"cannot connect to unix:{sock}" in t.log_text()
    sink = LmtpSink(sock, {})
    try:
        wait_for(lambda: sink.delivered_to("ann"), timeout=30, what="delivered once the server is up")
        assert len(sink.delivered_to("ann")) == 1
    finally:
        sink.close()
