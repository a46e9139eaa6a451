#!/usr/bin/env python3
"""Stall benchmark: how long does tern's loop keep other clients waiting
while it delivers one large message to many local mailboxes?

A release build of tern runs on loopback (no root, no network: dns_servers
points at a closed loopback port). One client does NOOP round trips in a
tight loop and records each round-trip time; meanwhile a second client
submits one message of --size bytes to --rcpts local users (u01@localhost,
...). The script waits until every mailbox has its copy, then reports the
worst, 99th percentile and median NOOP round trip over the whole window
(submission start to last delivery), and the delivery time (end of DATA to
the last copy in its mailbox).

    cargo build --release
    python3 tests/bench/stall.py                      # target/release/tern
    python3 tests/bench/stall.py --tern /path/to/tern --runs 3 --format mbox

Issue 13's target: worst NOOP round trip <= 20 ms for 10 MB to 50 users.
"""

import argparse
import os
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "e2e"))

import harness  # noqa: E402


def read_reply(f):
    lines = []
    while True:
        line = f.readline()
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return lines


class Prober(threading.Thread):
    """NOOP round trips in a tight loop; (start time, rtt) pairs."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")
        read_reply(self.f)
        self.sock.sendall(b"EHLO probe.test\r\n")
        read_reply(self.f)
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            t0 = time.perf_counter()
            self.sock.sendall(b"NOOP\r\n")
            r = read_reply(self.f)
            t1 = time.perf_counter()
            assert r[0].startswith(b"250"), r
            self.samples.append((t0, t1 - t0))
            # RSET now and then: the server counts NOOPs as no error, but
            # keep the session looking like a client.
        self.sock.sendall(b"QUIT\r\n")
        self.sock.close()


def message(size):
    line = b"x" * 76 + b"\r\n"
    head = b"From: bench@localhost\r\nTo: many@localhost\r\nSubject: stall bench\r\n\r\n"
    body = line * ((size - len(head)) // len(line))
    return head + body


def submit(port, rcpts, data):
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    read_reply(f)
    s.sendall(b"EHLO submit.test\r\n")
    read_reply(f)
    s.sendall(b"MAIL FROM:<bench@localhost>\r\n")
    assert read_reply(f)[0].startswith(b"250")
    for r in rcpts:
        s.sendall(f"RCPT TO:<{r}@localhost>\r\n".encode())
        assert read_reply(f)[0].startswith(b"250"), r
    s.sendall(b"DATA\r\n")
    assert read_reply(f)[0].startswith(b"354")
    s.sendall(data + b".\r\n")
    reply = read_reply(f)
    assert reply[0].startswith(b"250"), reply
    s.sendall(b"QUIT\r\n")
    s.close()


def delivered(t, users, fmt):
    n = 0
    for u in users:
        if fmt == "maildir":
            new = t.mail / u / "new"
            if new.is_dir() and any(new.iterdir()):
                n += 1
        else:
            # An mbox is complete when its entry ends with the empty line;
            # the queue file is gone when every copy is durable.
            pass
    if fmt == "mbox":
        return len(users) if not t.queued() else 0
    return n


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def one_run(args, workdir, run):
    d = Path(workdir) / f"run{run}"
    d.mkdir(parents=True)
    t = harness.Tern(
        d,
        max_message_size=args.size * 2,
        max_recipients=max(100, args.rcpts),
        local_delivery=args.format,
        log_level="debug",
        spool_sync="no" if args.no_sync else "yes",
    )
    t.start()
    users = [f"u{i:02d}" for i in range(1, args.rcpts + 1)]
    data = message(args.size)
    try:
        probe = Prober(t.port)
        probe.start()
        time.sleep(0.5)
        t_start = time.perf_counter()
        if args.idle:
            # The noise floor: the same probe, nothing delivered.
            time.sleep(args.idle)
            t_data = t_done = time.perf_counter()
        else:
            submit(t.port, users, data)
            t_data = time.perf_counter()
            deadline = t_data + args.timeout
            while delivered(t, users, args.format) < len(users):
                if time.perf_counter() > deadline:
                    raise TimeoutError("delivery did not finish")
                time.sleep(0.005)
            t_done = time.perf_counter()
        time.sleep(0.2)
        probe.stop.set()
        probe.join(5)
        window = [rtt for (t0, rtt) in probe.samples if t_start <= t0 <= t_done]
        worst_at = max((rtt, t0) for (t0, rtt) in probe.samples if t_start <= t0 <= t_done)[1]
        # tern's own account: its longest turn (logged from SLOW_TURN up).
        turns = [int(m) for m in re.findall(r"slow turn: (\d+) ms", t.log_text())]
        return {
            "turn_ms": max(turns, default=0),
            "slow_turns": len(turns),
            "worst_at_s": worst_at - t_data,
            "worst_ms": max(window) * 1000,
            "p99_ms": pct(window, 99) * 1000,
            "median_ms": statistics.median(window) * 1000,
            "noops": len(window),
            "submit_s": t_data - t_start,
            "delivery_s": t_done - t_data,
        }
    finally:
        t.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tern", default=os.environ.get("TERN_BIN")
                    or str(HERE.parents[1] / "target" / "release" / "tern"))
    ap.add_argument("--size", type=int, default=10 * 1024 * 1024)
    ap.add_argument("--rcpts", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--format", choices=["maildir", "mbox"], default="maildir")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--idle", type=float, default=0,
                    help="deliver nothing, probe for this many seconds: the machine's noise floor")
    ap.add_argument("--no-sync", action="store_true", help="spool_sync = no (no fsync at all)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the run directories (logs)")
    args = ap.parse_args()
    harness.TERN_BIN = args.tern
    print(f"# {' '.join(sys.argv)}")
    print(f"# tern {args.tern}; {args.size} bytes to {args.rcpts} {args.format} users; "
          f"load {os.getloadavg()[0]:.2f}")
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = tempfile.mkdtemp(dir=args.workdir) if args.keep else tmp
        if args.keep:
            print(f"# run directories kept in {workdir}")
        for run in range(args.runs):
            r = one_run(args, workdir, run)
            results.append(r)
            print(f"run {run + 1}: worst {r['worst_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, "
                  f"median {r['median_ms']:.2f} ms over {r['noops']} NOOPs "
                  f"(worst at {r['worst_at_s']:+.2f} s from the end of DATA); "
                  f"submit {r['submit_s']:.2f} s, delivery {r['delivery_s']:.2f} s; "
                  f"tern's longest turn {r['turn_ms']} ms ({r['slow_turns']} turns >= 10 ms)",
                  flush=True)
    print(f"worst of {args.runs}: {max(r['worst_ms'] for r in results):.1f} ms "
          f"(tern's longest turn {max(r['turn_ms'] for r in results)} ms); "
          f"median delivery {statistics.median(r['delivery_s'] for r in results):.2f} s")


if __name__ == "__main__":
    main()
