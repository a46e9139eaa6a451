"""End-to-end test harness: the real tern binary on loopback, plus small
loopback peers written here (a scriptable SMTP sink, a fake DNS server).

Nothing here talks to anything but 127.0.0.1 / ::1: every tern config
written by `Tern` points `dns_servers` at a loopback server (a fake, or a
closed port when the test needs no DNS).
"""

import contextlib
import glob
import os
import signal
import socket
import socketserver
import struct
import subprocess
import threading
import time
from pathlib import Path

TERN_BIN = os.environ.get("TERN_BIN") or str(
    Path(__file__).resolve().parents[2] / "target" / "debug" / "tern"
)


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, host="127.0.0.1", timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"nothing listening on {host}:{port}")
            time.sleep(0.02)


def wait_for(pred, timeout=10.0, what="condition"):
    """Polls pred until it is true (returns its value) or timeout seconds
    have passed. The deadline is on the monotonic clock, and pred is always
    asked at least once, and once more when the deadline has passed: the
    project VM can be paused and resumed (its log says "virtual machine
    fork"), after which the wall clock steps forward by minutes; a loop on
    time.time() then gave up without looking, on a daemon that had long
    since started."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def close_served(sock, thread, timeout=5.0):
    """Closes `sock`, which `thread` serves (blocked in accept() or
    recvfrom() on it), after that thread has ended; returns whether it
    did. Use it for every socket a thread of its own waits on.

    Closing a socket does not wake a thread blocked on it (Linux): the
    call stays on the old socket, the descriptor number is free, and the
    next socket made (the next test's Sink, say) takes it. When the
    blocked call is then interrupted (a signal under strace, a freeze) the
    kernel restarts it with the same number, now the new socket: a stale
    accept thread took tern's connection to the next test's Sink and
    closed it, so tern read end-of-stream before any greeting (the flake
    of test_old_state_file_reads_as_reasons_and_is_rewritten).
    shutdown(2) wakes the call (accept: EINVAL; recvfrom on UDP: empty),
    the thread ends, and only then is the number given back. A thread
    that does not end keeps its socket open: a leak, not a stolen socket.
    """
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # unconnected UDP: ENOTCONN, but its readers are woken all the same
    thread.join(timeout)
    if thread.is_alive():
        return False
    sock.close()
    return True


class Tern:
    """One tern daemon with its own spool, mail dir and config."""

    def __init__(self, tmp: Path, **overrides):
        self.dir = Path(tmp)
        self.port = free_port()
        self.spool = self.dir / "spool"
        self.mail = self.dir / "mail"
        self.conf = self.dir / "tern.conf"
        self.log = self.dir / "tern.log"
        self.proc = None
        settings = {
            "hostname": "mx.test",
            "listen": f"127.0.0.1:{self.port}",
            "spool_dir": str(self.spool),
            "mail_dir": str(self.mail),
            "pid_file": str(self.dir / "tern.pid"),
            "aliases": str(self.dir / "aliases"),
            "local_domains": "localhost, mx.test",
            "local_recipients": "any",
            "relay_networks": "127.0.0.0/8",
            "dns_servers": "127.0.0.1:1",
            "log_level": "debug",
        }
        settings.update({k: str(v) for k, v in overrides.items()})
        self.settings = settings
        self.write_config()
        if not (self.dir / "aliases").exists():
            (self.dir / "aliases").write_text("")

    def write_config(self):
        self.conf.write_text(
            "".join(f"{k} = {v}\n" for k, v in self.settings.items() if v is not None)
        )

    def cmd(self, *args, input=None, check=False, env=None):
        e = dict(os.environ)
        e.update(env or {})
        return subprocess.run(
            [TERN_BIN, "-c", str(self.conf), *args],
            input=input,
            capture_output=True,
            check=check,
            env=e,
            timeout=30,
        )

    def start(self):
        """Starts the daemon and waits until it serves: the port is open and,
        when the log level shows it, start-up recovery logged "started:" (the
        port opens before the spool is recovered, and tests that touch the
        spool at once raced it)."""
        starts = self.log_text().count("started: ")
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [TERN_BIN, "-c", str(self.conf)], stdout=logf, stderr=logf
        )
        logf.close()
        try:
            wait_port(self.port)
            if self.settings.get("log_level", "info") in ("info", "debug", "trace"):
                wait_for(
                    lambda: self.log_text().count("started: ") > starts
                    or self.proc.poll() is not None,
                    what="start-up recovery",
                )
        except TimeoutError:
            self.stop()
            raise RuntimeError("tern did not start:\n" + self.log_text())
        return self

    def send(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode if self.proc else None
        self.proc = None
        return code

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def maildir(self, user):
        new = self.mail / user / "new"
        if not new.is_dir():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir())]

    def queued(self):
        d = self.spool / "msg"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


# --- a scriptable SMTP sink --------------------------------------------------


class Sink:
    """A loopback SMTP server recording every transaction.

    `script` maps a stage ("greeting", "ehlo", "mail", "rcpt", "data",
    "dot") to a reply line, or to a callable(transaction, arg) returning one.
    Defaults accept everything.
    """

    def __init__(self, script=None, extensions=("PIPELINING", "8BITMIME", "SIZE 100000000"),
                 tls=None, implicit_tls=False, auth=None, oauth=None):
        """tls: an ssl.SSLContext (server side) to offer STARTTLS with, or to
        wrap every connection in when implicit_tls; auth: (user, password)
        to offer AUTH PLAIN/LOGIN with; oauth: the one access token accepted
        by AUTH XOAUTH2/OAUTHBEARER (offered then; a wrong token gets
        Google's 334 error challenge, then 535)."""
        self.script = dict(script or {})
        self.extensions = list(extensions)
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.auth = auth
        self.auth_seen = []  # (user, password, was_tls)
        self.oauth = oauth
        self.oauth_seen = []  # (mechanism, decoded initial response, answer to a 334)
        self.tls_sessions = 0
        self.messages = []  # dicts: sender, rcpts, data (bytes)
        self.sessions = 0
        self.commands = []  # every command line received, in order
        self.lock = threading.Lock()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                with sink.lock:
                    sink.sessions += 1
                sink._session(self.request)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _reply(self, stage, txn, arg, default):
        r = self.script.get(stage, default)
        if callable(r):
            r = r(txn, arg)
        return r

    def _session(self, sock):
        import base64

        def start_tls(plain):
            try:
                wrapped = self.tls.wrap_socket(plain, server_side=True)
            except Exception:
                return None
            self.tls_sessions += 1
            return wrapped

        tls_on = False
        if self.implicit_tls:
            sock = start_tls(sock)
            if sock is None:
                return
            tls_on = True
        rfile, wfile = sock.makefile("rb"), sock.makefile("wb")

        def send(line):
            wfile.write(line.encode() + b"\r\n")
            wfile.flush()

        txn = {"sender": None, "rcpts": [], "data": b"", "tls": tls_on, "auth": None}
        authed = None
        send(self._reply("greeting", txn, None, "220 sink.test ESMTP"))
        while True:
            line = rfile.readline()
            if not line:
                return
            cmd = line.decode(errors="replace").rstrip("\r\n")
            with self.lock:
                self.commands.append(cmd)  # every command line, for failure reports
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "EHLO":
                r = self._reply("ehlo", txn, cmd, None)
                if r:
                    send(r)
                else:
                    lines = ["sink.test"] + self.extensions
                    if self.tls and not tls_on:
                        lines.append("STARTTLS")
                    if self.auth and (tls_on or not self.tls):
                        lines.append("AUTH PLAIN LOGIN")
                    elif self.oauth and (tls_on or not self.tls):
                        lines.append("AUTH XOAUTH2 OAUTHBEARER")
                    for i, l in enumerate(lines):
                        send(("250 " if i == len(lines) - 1 else "250-") + l)
            elif verb == "STARTTLS" and self.tls and not tls_on:
                send("220 2.0.0 go ahead")
                sock = start_tls(sock)
                if sock is None:
                    return
                tls_on = True
                rfile, wfile = sock.makefile("rb"), sock.makefile("wb")
            elif verb == "AUTH" and self.oauth and len(cmd.split(" ")) > 2:
                mech, resp = cmd.split(" ")[1:3]
                text = base64.b64decode(resp).decode()
                fields = dict(f.split("=", 1) for f in text.split("\x01")[1:] if "=" in f)
                if mech.upper() == "XOAUTH2":
                    user = text.split("\x01")[0].removeprefix("user=")
                else:
                    user = text.split(",")[1].removeprefix("a=")
                ok = fields.get("auth") == "Bearer " + self.oauth
                answer = None
                if not ok:
                    send("334 " + base64.b64encode(
                        b'{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}'
                    ).decode())
                    answer = rfile.readline().decode().rstrip("\r\n")
                with self.lock:
                    self.oauth_seen.append((mech.upper(), text, answer))
                if ok:
                    authed = user
                    send("235 2.7.0 Accepted")
                else:
                    send("535 5.7.8 Username and Password not accepted")
            elif verb == "AUTH" and self.auth:
                parts = cmd.split(" ")
                if parts[1].upper() == "PLAIN":
                    if len(parts) > 2:
                        resp = parts[2]
                    else:
                        send("334 ")
                        resp = rfile.readline().decode().strip()
                    _, user, pw = base64.b64decode(resp).decode().split("\0")
                else:
                    send("334 VXNlcm5hbWU6")
                    user = base64.b64decode(rfile.readline().strip()).decode()
                    send("334 UGFzc3dvcmQ6")
                    pw = base64.b64decode(rfile.readline().strip()).decode()
                self.auth_seen.append((user, pw, tls_on))
                if (user, pw) == tuple(self.auth):
                    authed = user
                    send("235 2.7.0 ok")
                else:
                    send("535 5.7.8 bad credentials")
            elif verb == "HELO":
                send("250 sink.test")
            elif verb == "MAIL":
                txn = {"sender": cmd[10:].split(">")[0].lstrip("<"), "rcpts": [], "data": b"",
                       "tls": tls_on, "auth": authed}
                send(self._reply("mail", txn, cmd, "250 2.1.0 ok"))
            elif verb == "RCPT":
                addr = cmd[8:].split(">")[0].lstrip("<")
                r = self._reply("rcpt", txn, addr, "250 2.1.5 ok")
                if r.startswith("2"):
                    txn["rcpts"].append(addr)
                send(r)
            elif verb == "DATA":
                default = "354 go ahead" if txn["rcpts"] else "554 5.5.1 no valid recipients"
                r = self._reply("data", txn, cmd, default)
                send(r)
                if not r.startswith("354"):
                    continue
                data = b""
                while True:
                    l = rfile.readline()
                    if not l:
                        return
                    if l == b".\r\n":
                        break
                    if l.startswith(b".."):
                        l = l[1:]
                    data += l
                txn["data"] = data
                r = self._reply("dot", txn, None, "250 2.0.0 queued")
                if r.startswith("2"):
                    with self.lock:
                        self.messages.append(txn)
                send(r)
            elif verb == "RSET":
                txn = {"sender": None, "rcpts": [], "data": b""}
                send("250 ok")
            elif verb == "QUIT":
                send("221 bye")
                return
            elif verb == "NOOP":
                send("250 ok")
            else:
                send("502 not implemented")


# --- a fake DNS server -----------------------------------------------------------

QTYPES = {"A": 1, "MX": 15, "AAAA": 28, "CNAME": 5}


def _name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


class FakeDns:
    """A loopback UDP DNS server answering from a table.

    records: {("example.test", "MX"): [(10, "mx1.example.test")],
              ("mx1.example.test", "A"): ["127.0.0.1"]}
    A name with no entry of any type is NXDOMAIN; a name with entries of
    other types gives NOERROR/NODATA. `servfail` names get SERVFAIL;
    `silent` makes the server drop every query.
    """

    def __init__(self, records=None, servfail=(), silent=False):
        self.records = {(k[0].lower(), k[1]): v for k, v in (records or {}).items()}
        self.servfail = {n.lower() for n in servfail}
        self.silent = silent
        self.queries = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def close(self):
        self.running = False
        close_served(self.sock, self.thread)

    def _serve(self):
        while self.running:
            try:
                data, peer = self.sock.recvfrom(1500)
            except OSError:
                return
            if peer is None:
                return  # shut down by close()
            try:
                resp = self._answer(data)
            except Exception:
                continue
            if resp is not None and not self.silent:
                self.sock.sendto(resp, peer)

    def _answer(self, q):
        qid, flags, qd = struct.unpack(">HHH", q[:6])
        i = 12
        labels = []
        while q[i] != 0:
            n = q[i]
            labels.append(q[i + 1 : i + 1 + n].decode())
            i += 1 + n
        i += 1
        qtype, qclass = struct.unpack(">HH", q[i : i + 4])
        question = q[12 : i + 4]
        name = ".".join(labels).lower()
        tname = {v: k for k, v in QTYPES.items()}.get(qtype, str(qtype))
        self.queries.append((name, tname))
        rcode = 0
        answers = []
        if name in self.servfail:
            rcode = 2
        else:
            recs = self.records.get((name, tname))
            if recs is None:
                if not any(k[0] == name for k in self.records):
                    rcode = 3
            else:
                for r in recs:
                    if tname == "MX":
                        pref, host = r
                        rdata = struct.pack(">H", pref) + _name(host)
                    elif tname == "A":
                        rdata = socket.inet_pton(socket.AF_INET, r)
                    elif tname == "AAAA":
                        rdata = socket.inet_pton(socket.AF_INET6, r)
                    else:
                        rdata = _name(r)
                    answers.append(
                        b"\xc0\x0c" + struct.pack(">HHIH", qtype, 1, 60, len(rdata)) + rdata
                    )
        hdr = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, len(answers), 0, 0)
        return hdr + question + b"".join(answers)


# --- the wall clock, faked (libfaketime) ---------------------------------------


def libfaketime():
    """The libfaketime preload library (Debian package `faketime`). It is
    preloaded directly rather than through the `faketime` wrapper, which
    forks: signals such as `kill -9` must reach the daemon itself."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
                   + glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    assert found, "libfaketime.so.1 not found (apt-get install faketime)"
    return found[0]


def faketime_env(**env):
    """Environment for a process whose wall clock is faked as `env` says
    (FAKETIME, FAKETIME_TIMESTAMP_FILE, ...) while its monotonic clock stays
    real, as on a router whose clock is wrong or stepped by NTP."""
    return {"LD_PRELOAD": libfaketime(), "FAKETIME_DONT_FAKE_MONOTONIC": "1", **env}


@contextlib.contextmanager
def faked_clock(**env):
    """Processes started inside run with `faketime_env(**env)`."""
    env = faketime_env(**env)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def queue_id_second(qid):
    """The arrival second encoded in a queue ID (the top 40 bits)."""
    return int(qid, 16) >> 24
