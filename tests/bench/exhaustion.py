#!/usr/bin/env python3
"""Memory and service under exhaustion (issue 12, part 3 "Memory").

Not part of `make test`; run by hand (as root, for the file-descriptor
limit) and copy the figures into the README:

    python3 tests/bench/exhaustion.py                 # every case
    python3 tests/bench/exhaustion.py pipeline tls    # some cases
    TERN_BIN=target/debug/tern python3 tests/bench/exhaustion.py   # another binary

Cases (each on a fresh daemon and spool, each bounded to ~2 minutes):

  idle       1000 sessions after EHLO, waiting (the baseline)
  pipeline   1000 connections pipelining EHLO/NOOP without reading a reply
  stall      100 connections pipelining EHLO until tern stops reading them
  starttls   1000 connections that sent STARTTLS and then stay silent
  hello      1000 connections that sent STARTTLS and a ClientHello, then silent
  rcpts      one session offering 10,000 recipients (452 4.5.3 past max_recipients)
  queue      100,000 held messages (smtp-source into hold_outbound = yes),
             then a restart: time to the first greeting, PSS

For each case: tern's Pss (/proc/PID/smaps_rollup) at rest, under load (the
highest of samples taken while the load is in place) and after the load is
gone, and whether a fresh client still gets a message through ("served",
with its latency). The limits table of the README says what a session may
hold; the script prints that ceiling next to the measured figure.

Loopback only; dns_servers points at a closed loopback port. The release
binary is used if it exists (else the debug one, and the script says so).
"""

import os
import resource
import selectors
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from harness import free_port  # noqa: E402

CERTS = ROOT / "tests" / "certs"
# Overridable for a quick try (EXH_CONNS=100 EXH_QUEUED=1000 ...).
CONNS = int(os.environ.get("EXH_CONNS", 1000))
RCPTS = int(os.environ.get("EXH_RCPTS", 10_000))
QUEUED = int(os.environ.get("EXH_QUEUED", 100_000))
CASE_LIMIT = 110  # seconds of load generation per case
NOFILE = 65536

# What the README's limits table promises per plaintext session: the
# input buffer (16 KiB) plus unread replies (8 KiB), plus what an idle
# session costs (3.4-3.8 KiB measured, README "Footprint").
PIPELINE_CEILING_KIB = 16 + 8 + 4
# Per TLS session: plaintext in/out 16 + 16 KiB, ciphertext out 18 KiB,
# plus the plaintext session's own buffers.
TLS_CEILING_KIB = 16 + 16 + 18 + 16 + 8


def binary():
    if os.environ.get("TERN_BIN"):
        return Path(os.environ["TERN_BIN"]), "TERN_BIN"
    rel = ROOT / "target" / "release" / "tern"
    if rel.exists():
        return rel, "release"
    return ROOT / "target" / "debug" / "tern", "DEBUG build (no release binary)"


BIN, BUILD = binary()


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, max(hard, NOFILE)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pss(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


class Tern:
    def __init__(self, d, **extra):
        self.dir = Path(d)
        self.port = free_port()
        self.conf = self.dir / "tern.conf"
        self.log = self.dir / "tern.log"
        settings = {
            "hostname": "bench.test",
            "listen": f"127.0.0.1:{self.port}",
            "spool_dir": self.dir / "spool",
            "mail_dir": self.dir / "mail",
            "pid_file": self.dir / "tern.pid",
            "aliases": self.dir / "aliases",
            "local_domains": "localhost",
            "local_recipients": "any",
            "relay_networks": "127.0.0.0/8",
            "dns_servers": "127.0.0.1:1",
            "smarthost": f"127.0.0.1:{free_port()}",  # closed: nothing leaves
            "smarthost_tls": "none",
            "hold_outbound": "yes",
            "max_connections": CONNS + 100,
            "max_connections_per_ip": CONNS + 100,
            "log_level": "warn",
        }
        settings.update(extra)
        (self.dir / "aliases").write_text("")
        self.settings = settings
        self.write()
        self.proc = None

    def write(self):
        self.conf.write_text("".join(f"{k} = {v}\n" for k, v in self.settings.items()))

    def start(self):
        t0 = time.monotonic()
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen([str(BIN), "-c", str(self.conf)], stdout=logf,
                                         stderr=logf)
        greeting = first_greeting(self.port, timeout=120)
        return greeting - t0

    def stop(self):
        """SIGTERM; returns the seconds the daemon took to exit."""
        t0 = time.monotonic()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                print("  tern did not stop within 30 s of SIGTERM: killed")
                self.proc.kill()
                self.proc.wait()
        return time.monotonic() - t0

    def pss(self):
        return pss(self.proc.pid)

    def alive(self):
        return self.proc.poll() is None

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def settle(self, fds, timeout=20):
        """Waits until tern is back to `fds` descriptors (every session
        closed); returns the seconds that took, or None."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.fds() <= fds:
                return time.monotonic() - t0
            time.sleep(0.1)
        return None


def first_greeting(port, timeout):
    """Monotonic time at which a new connection first got its 220."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
                s.settimeout(max(deadline - time.monotonic(), 0.1))
                if s.recv(512).startswith(b"220"):
                    return time.monotonic()
        except OSError:
            time.sleep(0.01)
    raise TimeoutError("no greeting")


def served(t, timeout=10):
    """A fresh client sends a local message; returns the latency or None."""
    t0 = time.monotonic()
    try:
        with smtplib.SMTP("127.0.0.1", t.port, timeout=timeout) as c:
            c.sendmail("probe@bench.test", ["probe@localhost"], b"Subject: probe\r\n\r\nprobe\r\n")
        return time.monotonic() - t0
    except (OSError, smtplib.SMTPException) as e:
        print(f"    probe failed: {e!r}")
        return None


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_burst(t, limit=60):
    """Samples Pss until tern has been idle (under 5 % CPU) for a second;
    returns (CPU seconds, wall seconds, highest Pss)."""
    t0, c0 = time.monotonic(), cpu_seconds(t.proc.pid)
    peak, last, idle_since = 0, c0, None
    while time.monotonic() - t0 < limit:
        time.sleep(0.1)
        peak = max(peak, t.pss())
        c = cpu_seconds(t.proc.pid)
        if c - last < 0.005:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= 1:
                break
        else:
            idle_since = None
        last = c
    end = idle_since or time.monotonic()
    return cpu_seconds(t.proc.pid) - c0, end - t0, peak


def sample_max(t, seconds):
    peak = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, t.pss())
        time.sleep(0.1)
    return peak


def report(name, rest, peak, after, n, ceiling_kib, latency, extra=""):
    per = (peak - rest) / n if n else 0
    verdict = "within" if per <= ceiling_kib else "ABOVE"
    print(f"  {name}: Pss at rest {rest} kB, under load {peak} kB "
          f"(+{peak - rest} kB, {per:.1f} kB per session; README ceiling {ceiling_kib} KiB: "
          f"{verdict}), after {after} kB")
    print(f"  served during the load: {'yes, %.2f s' % latency if latency is not None else 'NO'}"
          f"{extra}")


def open_conns(port, n, rcvbuf=None):
    socks = []
    for _ in range(n):
        s = socket.socket()
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, rcvbuf)
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


# --- cases -----------------------------------------------------------------------


def pipeline_round(t, conns=CONNS, chunk=b"EHLO pipeline.test\r\nNOOP\r\n" * 200,
                   cap=256 * 1024):
    socks = open_conns(t.port, conns, rcvbuf=4096)
    sel = selectors.DefaultSelector()
    sent = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_WRITE)
        sent[s] = 0
    deadline = time.monotonic() + 60
    while sel.get_map() and time.monotonic() < deadline:
        events = sel.select(timeout=1.0)
        if not events:
            break  # nobody writable for a second: tern stopped reading them all
        for key, _ in events:
            s = key.fileobj
            try:
                sent[s] += s.send(chunk)
            except BlockingIOError:
                continue
            if sent[s] >= cap:
                sel.unregister(s)
    blocked = sum(1 for s in socks if sent[s] < cap)
    total = sum(sent.values())
    peak = sample_max(t, 3)
    unread = unread_by_tern(t.port)
    latency = served(t)
    peak = max(peak, sample_max(t, 1))
    for s in socks:
        s.close()
    return peak, latency, blocked, total, unread


def unread_by_tern(port):
    """(bytes, connections): what the kernel holds for tern's side of the
    connections (Recv-Q), i.e. what tern declined to read, and on how many."""
    out = subprocess.run(["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    queues = [int(line.split()[0]) for line in out.splitlines() if line.split()]
    return sum(queues), sum(1 for q in queues if q > 0)


STALL_CONNS = 100


def case_stall(d):
    """Backpressure proper: EHLO-only pipelining (a 100-octet reply per
    8-octet command) until tern's socket send buffers are full and tern
    stops reading. 100 connections, not 1000: the kernel buffers up to a
    few MB per connection here, and 1000 would push the shared machine's
    TCP memory towards its pressure limit."""
    t = Tern(d)
    t.start()
    time.sleep(0.5)
    rest, fds = t.pss(), t.fds()
    peak, latency, blocked, total, (unread, stalled) = pipeline_round(
        t, conns=STALL_CONNS, chunk=b"EHLO a\r\n" * 1000, cap=2 * 1024 * 1024)
    gone = t.settle(fds)
    after = t.pss()
    alive = t.alive()
    t.stop()
    report("stall", rest, peak, after, STALL_CONNS, PIPELINE_CEILING_KIB, latency,
           f"; {total / STALL_CONNS / 1024:.0f} KiB written per connection, tern stopped "
           f"reading {stalled} of {STALL_CONNS} ({unread / 1024:.0f} KiB unread in the kernel); "
           f"sessions gone {gone and f'{gone:.1f} s' or 'NOT within 20 s'}; alive {alive}")


def case_pipeline(d):
    """Every connection writes EHLO/NOOP until its socket blocks (tern
    stopped reading it) or 256 KiB are written, and never reads. Twice:
    the second round shows whether memory kept after the first is reused
    (no growth) or leaked."""
    t = Tern(d)
    t.start()
    time.sleep(0.5)
    rest, fds = t.pss(), t.fds()
    peak, latency, blocked, total, (unread, stalled) = pipeline_round(t)
    gone = t.settle(fds)
    after = t.pss()
    peak2, latency2, _, _, _ = pipeline_round(t)
    t.settle(fds)
    after2 = t.pss()
    alive = t.alive()
    t.stop()
    report("pipeline", rest, peak, after, CONNS, PIPELINE_CEILING_KIB, latency,
           f"; {total / CONNS / 1024:.0f} KiB written per connection on average "
           f"({blocked} blocked), tern stopped reading {stalled} of them "
           f"({unread / 1024:.0f} KiB unread in the kernel); "
           f"sessions gone {gone and f'{gone:.1f} s' or 'NOT within 20 s'} after the clients "
           f"closed; alive {alive}")
    print(f"  pipeline, second round: peak {peak2} kB, after {after2} kB, served "
          f"{'yes, %.2f s' % latency2 if latency2 is not None else 'NO'}")


def case_idle(d):
    """1000 sessions that said EHLO and wait (the baseline per session)."""
    t = Tern(d)
    t.start()
    time.sleep(0.5)
    rest = t.pss()
    socks = open_conns(t.port, CONNS)
    for s in socks:
        s.sendall(b"EHLO idle.test\r\n")
    for s in socks:
        buf = b""
        while b"\r\n250 " not in buf:
            buf += s.recv(4096)
    peak = sample_max(t, 2)
    latency = served(t)
    for s in socks:
        s.close()
    time.sleep(1)
    after = t.pss()
    t.stop()
    report("idle", rest, peak, after, CONNS, 8, latency, " (ceiling: the README's target)")


def starttls_conns(port, hello):
    socks = open_conns(port, CONNS)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ok = 0
    for s in socks:
        s.sendall(b"EHLO tls.test\r\nSTARTTLS\r\n")
        if not hello:
            continue
        buf = b""
        while b"\r\n220 " not in b"\r\n" + buf:
            data = s.recv(4096)
            if not data:
                break
            buf += data
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        s.sendall(out.read())  # the ClientHello; then silence
        ok += 1
    return socks, ok


def case_starttls(d, hello=False):
    t = Tern(d, tls_cert=CERTS / "server.pem", tls_key=CERTS / "server.key")
    t.start()
    time.sleep(0.5)
    rest, fds = t.pss(), t.fds()
    t0 = time.monotonic()
    socks, hellos = starttls_conns(t.port, hello)
    setup = time.monotonic() - t0
    peak = sample_max(t, 3)
    latency = served(t)
    for s in socks:
        s.close()
    gone = t.settle(fds)
    after = t.pss()
    alive = t.alive()
    t.stop()
    report("hello" if hello else "starttls", rest, peak, after, CONNS, TLS_CEILING_KIB, latency,
           f"; {CONNS} connections set up in {setup:.1f} s"
           + (f", {hellos} ClientHellos sent" if hello else "")
           + f"; sessions gone {gone and f'{gone:.1f} s' or 'NOT within 20 s'} after the "
           f"clients closed; alive {alive}")


def case_rcpts(d):
    t = Tern(d)
    t.start()
    time.sleep(0.5)
    rest = t.pss()
    s = socket.create_connection(("127.0.0.1", t.port), timeout=30)
    f = s.makefile("rb")
    f.readline()
    lines = [b"EHLO many.test\r\n", b"MAIL FROM:<a@bench.test>\r\n"]
    lines += [f"RCPT TO:<r{i}@far.test>\r\n".encode() for i in range(RCPTS)]
    lines += [b"RSET\r\n", b"QUIT\r\n"]

    def writer():
        for i in range(0, len(lines), 100):
            s.sendall(b"".join(lines[i:i + 100]))

    peak = [0]
    done = threading.Event()

    def sampler():
        while not done.is_set():
            peak[0] = max(peak[0], t.pss())
            time.sleep(0.005)

    threading.Thread(target=sampler, daemon=True).start()
    t0 = time.monotonic()
    w = threading.Thread(target=writer, daemon=True)
    w.start()
    counts = {}
    replies = 0
    expected = RCPTS + 4
    while replies < expected:
        line = f.readline()
        if not line:
            break
        if line[3:4] == b"-":
            continue
        replies += 1
        key = line[:9].decode(errors="replace").strip()
        counts[key] = counts.get(key, 0) + 1
    elapsed = time.monotonic() - t0
    latency = served(t)
    done.set()
    s.close()
    time.sleep(1)
    after = t.pss()
    alive = t.alive()
    t.stop()
    print(f"  rcpts: {RCPTS} RCPT pipelined, all replies in {elapsed:.2f} s, replies {counts}")
    print(f"  rcpts: Pss at rest {rest} kB, peak {peak[0]} kB (+{peak[0] - rest} kB), "
          f"after {after} kB; served: {'yes, %.2f s' % latency if latency else 'NO'}; "
          f"alive {alive}")


def case_queue(d):
    """100,000 held messages, written with spool_sync = no to save time
    (the spool is the same afterwards), then a restart with spool_sync =
    yes (the default): time to the first greeting and Pss."""
    t = Tern(d, spool_sync="no", max_connections=200, max_connections_per_ip=200)
    t.start()
    time.sleep(0.5)
    rest = t.pss()
    t0 = time.monotonic()
    src = subprocess.Popen(["/usr/sbin/smtp-source", "-s", "20", "-m", str(QUEUED),
                            "-f", "a@bench.test", "-t", "x@far.test", "-l", "200",
                            f"127.0.0.1:{t.port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = src.communicate(timeout=CASE_LIMIT)
    except subprocess.TimeoutExpired:
        src.kill()
        _, err = src.communicate()
        print(f"  queue: smtp-source stopped after {CASE_LIMIT} s")
    gen = time.monotonic() - t0
    spool = Path(d) / "spool" / "msg"
    n = sum(1 for _ in os.scandir(spool))
    loaded = t.pss()
    latency = served(t)
    probe = Path(d) / "mail" / "probe" / "new"
    deadline = time.monotonic() + 10
    while not (probe.is_dir() and any(probe.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    stopped = t.stop()
    print(f"  queue: stopped in {stopped:.1f} s")
    print(f"  queue: {n} messages queued in {gen:.0f} s ({n / gen:.0f} msg/s)"
          + (f"; smtp-source: {err.decode().strip()[:200]}" if src.returncode else ""))
    print(f"  queue: Pss at rest {rest} kB, with {n} queued {loaded} kB "
          f"({(loaded - rest) * 1024 / max(n, 1):.0f} B per message); "
          f"served while loaded: {'yes, %.2f s' % latency if latency else 'NO'}")
    t.settings["spool_sync"] = "yes"
    t.write()
    startup = t.start()
    first = t.pss()
    latency = served(t)
    busy, burst, settled = cpu_burst(t)
    log = t.log.read_text(errors="replace")
    alive = t.alive()
    queued_now = sum(1 for _ in os.scandir(spool))
    delivered = len(list((Path(d) / "mail" / "probe" / "new").iterdir()))
    stopped = t.stop()
    print(f"  queue restart: first greeting after {startup:.2f} s; Pss then {first} kB, "
          f"highest until the start-up queue run ended {settled} kB; that run (every held "
          f"message looked at once) took {burst:.1f} s, {busy:.1f} s of CPU; served during it: "
          f"{'yes, %.2f s' % latency if latency else 'NO'}; alive {alive}; "
          f"{queued_now} still queued, {delivered} probe messages delivered locally; "
          f"stopped in {stopped:.1f} s")
    errors = [l for l in log.splitlines() if "ERROR" in l or "panic" in l]
    if errors:
        print(f"  queue: {len(errors)} error lines, first: {errors[0]}")


CASES = {
    "idle": case_idle,
    "pipeline": case_pipeline,
    "stall": case_stall,
    "starttls": case_starttls,
    "hello": lambda d: case_starttls(d, hello=True),
    "rcpts": case_rcpts,
    "queue": case_queue,
}


def main():
    names = sys.argv[1:] or list(CASES)
    if any(n in ("-h", "--help") for n in names):
        print(__doc__)
        return
    unknown = [n for n in names if n not in CASES]
    if unknown:
        sys.exit(f"unknown case(s): {' '.join(unknown)}; cases: {' '.join(CASES)} (see --help)")
    nofile = raise_nofile()
    print(f"tern binary: {BIN} ({BUILD}); RLIMIT_NOFILE {nofile} for tern and the clients; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    for name in names:
        print(f"[{name}]")
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"tern-exh-{name}-") as d:
            CASES[name](d)
            t1 = time.monotonic()
        print(f"  ({t1 - t0:.0f} s, then {time.monotonic() - t1:.0f} s to remove the spool)")


if __name__ == "__main__":
    main()
