#!/usr/bin/env python3
"""Memory with N outbound connections open (issue 3's closing figure).

A loopback "tarpit" smarthost greets and then never answers EHLO, so every
delivery attempt holds its connection open. tern (release build) gets N
messages with max_outbound = N; once N connections are established the
script reads tern's Pss/VmRSS. Usage: outbound_memory.py [N] (default 100).
Loopback only; dns_servers points at a closed loopback port."""
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from harness import free_port, wait_port  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
BIN = Path(__file__).resolve().parents[2] / "target" / "release" / "tern"


def pss(pid):
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1])


def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


held = []
lst = socket.socket()
lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
lst.bind(("127.0.0.1", 0))
lst.listen(1024)
sink_port = lst.getsockname()[1]


def tarpit():
    while True:
        try:
            c, _ = lst.accept()
        except OSError:
            return
        c.sendall(b"220 tarpit ESMTP\r\n")
        held.append(c)


threading.Thread(target=tarpit, daemon=True).start()
with tempfile.TemporaryDirectory() as d:
    port = free_port()
    conf = Path(d) / "tern.conf"
    conf.write_text(
        f"hostname = mem.test\nlisten = 127.0.0.1:{port}\nspool_dir = {d}/spool\nmail_dir = {d}/mail\n"
        f"pid_file = {d}/pid\naliases = {d}/aliases\nrelay_networks = 127.0.0.0/8\n"
        f"smarthost = 127.0.0.1:{sink_port}\nsmarthost_tls = none\ndns_servers = 127.0.0.1:1\n"
        f"max_outbound = {N}\nmax_outbound_per_host = {N}\nclient_timeout = 10m\nlog_level = warn\n"
    )
    p = subprocess.Popen([str(BIN), "-c", str(conf)])
    try:
        wait_port(port)
        time.sleep(0.3)
        rest = (pss(p.pid), rss(p.pid))
        with smtplib.SMTP("127.0.0.1", port) as c:
            for i in range(N):
                c.sendmail("a@x.test", [f"r{i}@far.test"], b"Subject: m\r\n\r\nbody\r\n")
        deadline = time.monotonic() + 30
        while len(held) < N and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        busy = (pss(p.pid), rss(p.pid))
        print(f"outbound connections held open: {len(held)}")
        print(f"at rest:        Pss {rest[0]} kB, VmRSS {rest[1]} kB")
        print(f"with {len(held)} open: Pss {busy[0]} kB, VmRSS {busy[1]} kB "
              f"({(busy[0] - rest[0]) / max(len(held), 1):.1f} kB Pss per outbound connection)")
    finally:
        p.terminate()
        p.wait(20)  # a graceful stop waits up to 10 s for the stuck deliveries
        lst.close()
