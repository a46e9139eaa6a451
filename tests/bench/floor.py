#!/usr/bin/env python3
"""floor.py - tern against the floor (`make bench-floor`; issue 16, workload 6).

The floor (tests/bench/floor.rs, `cargo build --release --example floor`) is
the least work a durable MTA can do: one thread, a mio loop, fixed SMTP
replies, one file per message made durable with the same syscalls as
tern's group commit. This script runs the accept-only workload (2 KB
messages, c=20 or `-c N`, one session per message) against tern with
`hold_outbound = yes`, against the floor, and, as root with Postfix
installed, against a throwaway Postfix in hold mode (as bench.py does);
then counts syscalls per message of tern and the floor under `strace -f -c`.

Python 3 standard library only; reuses bench.py (processes, tern and
Postfix set-up, smtp-source command lines, the timed run). Loopback only;
every tern config sets `dns_servers = 127.0.0.1:1`.
"""
import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (tests/bench/bench.py)
from bench import BenchError, log, wait_until  # noqa: E402

ROOT = bench.ROOT
SMALL = bench.SMALL
CONC = 20
TARGET = 0.70  # issue 16: tern at >= 70 % of the floor


class Floor:
    """The floor program, like bench.Tern: its own dir, spool, port."""

    def __init__(self, b, name, hold=True, store=None):
        self.bench, self.name = b, name
        self.dir = b.work / name
        self.store = store or self.dir
        self.port = bench.free_port()
        self.p = None
        self.prefix = []  # as bench.Tern: e.g. valgrind (callgrind.py)
        self.start_timeout = 15

    def start(self):
        self.dir.mkdir(exist_ok=True)
        cmd = [*self.prefix, str(self.bench.floor), "--listen", f"127.0.0.1:{self.port}",
               "--spool", str(self.store / "spool")]
        self.p = self.bench.procs.spawn("floor", cmd, self.dir / "floor.log")
        if not wait_until(lambda: bench.is_listening(self.port) or self.p.poll() is not None, self.start_timeout) \
                or self.p.poll() is not None:
            raise BenchError(f"floor did not start (rc={self.p.poll()}): " + bench.tail(self.dir / "floor.log"))
        return self

    @property
    def pid(self):
        return self.p.pid

    def check_alive(self):
        if self.p.poll() is not None:
            raise BenchError(f"floor exited (rc={self.p.returncode}): " + bench.tail(self.dir / "floor.log"))

    def stop(self):
        if self.p is not None:
            self.bench.procs.stop(self.p, signal.SIGTERM, 15)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def count_files(d):
    try:
        return sum(1 for _ in os.scandir(d))
    except OSError:
        return 0


def accept_run(b, kind, name):
    """One timed accept-only run on a fresh MTA (bench.throughput, hold)."""
    if kind is bench.Postfix:
        with bench.Postfix(b, name, hold=True) as pf:
            return bench.throughput(b, pf, b.args.conc, SMALL, True)
    with kind(b, name, hold=True) as m:
        res = bench.throughput(b, m, b.args.conc, SMALL, True, io_pid=m.pid, cpu_pid=m.pid)
        # every acknowledged message must be on disk: a floor that skipped
        # the file would be no floor
        spool = m.store / "spool" / "msg"
        res["files"] = count_files(spool)
        want = b.args.warmup + res.get("done", b.args.messages)
        if res["files"] < want:
            raise BenchError(f"{name}: {res['files']} files in {spool}, expected at least {want}")
        return res


SYSCALL_LINE = re.compile(r"^\s*[\d.]+\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(?:(\d+)\s+)?([a-z_0-9]+)\s*$")


def parse_strace_c(path):
    """{syscall: (calls, errors, seconds)} from `strace -c` output."""
    out = {}
    for line in Path(path).read_text().splitlines() if Path(path).is_file() else []:
        m = SYSCALL_LINE.match(line)
        if m and m.group(5) != "total":
            out[m.group(5)] = (int(m.group(3)), int(m.group(4) or 0), float(m.group(1)))
    return out


def syscall_audit(b, kind, name, conc=CONC):
    """strace -f -c (every syscall) on the MTA while it accepts M messages
    at concurrency conc, after 20 warm-up messages."""
    a = b.args
    m = a.strace_messages
    with kind(b, name, hold=True) as mta:
        bench.run_source(b, mta, conc, 20, SMALL, "warmup.log", 60)
        out = mta.dir / "strace.txt"
        cmd = [b.strace, "-f", "-c", "-qq", "-o", str(out), "-p", str(mta.pid)]
        st = b.procs.spawn("strace", cmd, mta.dir / "strace.log")
        try:
            if not wait_until(lambda: bench.tracer_pid(mta.pid) != 0 or st.poll() is not None, 10) \
                    or st.poll() is not None:
                raise BenchError("strace did not attach: " + bench.tail(mta.dir / "strace.log"))
            time.sleep(0.3)
            t0 = time.monotonic()
            bench.run_source(b, mta, conc, m, SMALL, "source.log", a.run_cap * 3)
            elapsed = time.monotonic() - t0
            time.sleep(0.3)
        finally:
            b.procs.stop(st, signal.SIGINT, 20)  # strace -c prints its summary on SIGINT
        mta.check_alive()
        calls = parse_strace_c(out)
        if not calls:
            raise BenchError("strace printed no syscall table: " + bench.tail(mta.dir / "strace.log"))
        return {"messages": m, "calls": {k: v[0] for k, v in calls.items()},
                "errors": {k: v[1] for k, v in calls.items() if v[1]},
                "seconds": {k: v[2] for k, v in calls.items()},
                "rate_under_strace": m / elapsed,
                "command": " ".join(shlex.quote(x) for x in cmd)}


def summarize(b, key):
    runs = b.results.get(key, {}).get("runs", [])
    if not runs:
        return
    rates = sorted(r["rate"] for r in runs)
    r = b.results[key]
    r.update(rate=statistics.median(rates), min=rates[0], max=rates[-1], reps=len(runs),
             capped=any(x.get("capped") for x in runs),
             delivered_while_held=max(x.get("delivered_while_held", 0) for x in runs))
    for field in ("cpu_us_per_msg", "cpu_user_us_per_msg", "cpu_sys_us_per_msg", "write_bytes_per_msg"):
        vals = [x[field] for x in runs if x.get(field) is not None]
        if vals:
            r[field] = statistics.median(vals)


FSYNC = ("fsync", "fdatasync", "syncfs", "sync_file_range")
GROUPS = [
    ("fsync family", FSYNC),
    ("write to sockets/files (write, sendto, sendmsg, writev)", ("write", "sendto", "sendmsg", "writev", "pwrite64")),
    ("read (read, recvfrom, recvmsg)", ("read", "recvfrom", "recvmsg", "readv", "pread64")),
    ("openat / open", ("openat", "open")),
    ("rename*", ("rename", "renameat", "renameat2")),
    ("close", ("close",)),
    ("epoll_wait", ("epoll_wait", "epoll_pwait", "epoll_pwait2")),
    ("epoll_ctl", ("epoll_ctl",)),
    ("accept4", ("accept4", "accept")),
]


def report(b, env):
    a, R, E = b.args, b.results, b.errors

    def n0(v):
        return "n/a" if v is None else f"{v:,.0f}"

    def cell(key):
        r = R.get(key)
        if not r or "rate" not in r:
            return "error (see below)" if any(k.startswith(key + "#") for k in E) else "not run"
        c = n0(r["rate"]) + ("†" if r.get("capped") else "")
        if r["reps"] > 1:
            c += f" ({n0(r['min'])}–{n0(r['max'])})"
        return c

    def rate(key):
        return (R.get(key) or {}).get("rate")

    L = [f"# tern against the floor: accept only, 2 KB, c={a.conc}", ""]
    L.append(f"- date: {env['date']}")
    L.append(f"- command: `{env['command']}`")
    L.append(f"- tern: {env['tern_version']} ({b.tern}); floor: {b.floor}")
    if env.get("interrupted"):
        L.append(f"- **interrupted by {env['interrupted']}: partial results**")
    L.append(f"- host: {env['host']}; load average at start {env['loadavg_start']}, "
             f"at end {env.get('loadavg_end', '?')}")
    L.append(f"- spool on {env['work_fs']} ({env['work_dir']})")
    L.append(f"- each run: a fresh MTA with an empty spool, {a.warmup} warm-up messages, `sync`, then N = "
             f"{a.messages} messages timed; median of {a.reps} run(s), min–max in brackets; repetitions "
             f"interleave tern, the floor (and Postfix)")
    ref = R.get("reference_skipped")
    L.append(f"- Postfix: {R.get('postfix_version', '?')} (hold mode, as bench.py)" if ref is None
             else f"- Postfix: skipped: {ref}")
    L.append("")
    L.append("| MTA | accepted msg/s | of the floor | CPU µs per message: user + system (MTA process) |")
    L.append("|---|---:|---:|---:|")
    fl = rate("floor")
    for key, label in (("floor", "floor"), ("tern", "tern (`hold_outbound = yes`)"), ("postfix", "Postfix (hold)")):
        if key == "postfix" and ref is not None:
            continue
        r = R.get(key) or {}
        cpu = "–"
        if key != "postfix" and r.get("cpu_us_per_msg") is not None:
            cpu = f"{n0(r['cpu_user_us_per_msg'])} + {n0(r['cpu_sys_us_per_msg'])} = {n0(r['cpu_us_per_msg'])}"
        frac = f"{rate(key) / fl:.0%}" if fl and rate(key) else "–"
        L.append(f"| {label} | {cell(key)} | {frac} | {cpu} |")
    L.append("")
    t, p = rate("tern"), rate("postfix")
    if t and fl:
        verdict = "meets" if t / fl >= TARGET else "misses"
        L.append(f"**tern / floor = {t / fl:.2f}** ({verdict} the target of ≥ {TARGET:.0%}).")
    if t and p:
        L.append(f"**tern / Postfix = {t / p:.2f}**.")
    L.append("")
    L.append(f"Rate = N / time from `smtp-source` start until it exited (every message got its 250 after "
             f"being made durable): `{' '.join(bench.source_cmd('smtp-source', 'PORT', a.conc, a.messages, SMALL))}`. "
             f"CPU = utime and stime of the MTA process from /proc/PID/stat over the timed run / N "
             f"(median of the runs; 10 ms ticks; system time is the kernel working for the process's syscalls, "
             f"TCP included; Postfix is many processes: not measured). The file count in each spool is "
             f"checked against the messages acknowledged.")

    # syscalls
    st = {k: R.get(f"strace_{k}") for k in ("tern", "floor")}
    L.append("")
    L.append(f"## Syscalls per accepted message (`strace -f -c`, {a.strace_messages} messages at c={CONC})")
    L.append("")
    if not b.strace:
        L.append("not measured: strace missing (apt-get install strace)")
    elif not any(st.values()):
        L.append("not measured (error, see below)")
    else:
        M = a.strace_messages
        per = {k: ({s: c / M for s, c in v["calls"].items()} if v else {}) for k, v in st.items()}
        L.append("| syscall | tern | floor | tern − floor |")
        L.append("|---|---:|---:|---:|")

        def row(label, names):
            vals = {}
            for k in ("tern", "floor"):
                if not st[k]:
                    vals[k] = (None, "n/a")
                    continue
                v = sum(per[k].get(s, 0) for s in names)
                failed = sum(st[k]["errors"].get(s, 0) for s in names) / M
                vals[k] = (v, f"{v:.2f}" + (f" ({failed:.2f} failed)" if failed >= 0.005 else ""))
            tv, fv = vals["tern"][0], vals["floor"][0]
            diff = f"{tv - fv:+.2f}" if tv is not None and fv is not None else "–"
            L.append(f"| {label} | {vals['tern'][1]} | {vals['floor'][1]} | {diff} |")

        grouped = set()
        for label, names in GROUPS:
            row(f"**{label}**", names)
            grouped.update(names)
            present = [s for s in names if per["tern"].get(s) or per["floor"].get(s)]
            if len(present) > 1:
                for s in present:
                    row(f"· {s}", (s,))
        others = sorted({s for v in per.values() for s in v} - grouped,
                        key=lambda s: -(per["tern"].get(s, 0) + per["floor"].get(s, 0)))
        for s in others:
            row(s, (s,))
        row("**total**", tuple({s for v in per.values() for s in v}))
        for k in ("tern", "floor"):
            v = st[k]
            if not v:
                continue
            syncs = sum(v["calls"].get(s, 0) for s in ("fdatasync", "syncfs"))
            L.append("")
            L.append(f"- {k}: {v['calls'].get('syncfs', 0)} syncfs + {v['calls'].get('fdatasync', 0)} "
                     f"fdatasync for {M} messages = {M / syncs if syncs else float('nan'):.1f} messages per "
                     f"commit; {v['rate_under_strace']:.0f} msg/s under strace")
        c1 = {k: R.get(f"strace_{k}_c1") for k in ("tern", "floor")}
        if any(c1.values()):
            L.append("")
            L.append("At c=1 (one message per loop turn, no group commit), per message:")
            L.append("")
            L.append("| syscall | tern | floor |")
            L.append("|---|---:|---:|")
            for label, names in (("fdatasync", ("fdatasync",)), ("fsync", ("fsync",)), ("syncfs", ("syncfs",)),
                                 ("openat", ("openat",)), ("renameat2", ("renameat2", "rename", "renameat")),
                                 ("read (failed)", ("read", "recvfrom")), ("epoll_wait", ("epoll_wait", "epoll_pwait")),
                                 ("epoll_ctl", ("epoll_ctl",)),
                                 ("total", None)):
                cells = []
                for k in ("tern", "floor"):
                    v = c1[k]
                    if not v:
                        cells.append("n/a")
                        continue
                    keys = names or tuple(v["calls"])
                    n = sum(v["calls"].get(x, 0) for x in keys) / M
                    f = sum(v["errors"].get(x, 0) for x in keys) / M
                    cells.append(f"{n:.2f}" + (f" ({f:.2f})" if f >= 0.005 and label.startswith(("read", "total"))
                                               else ""))
                L.append(f"| {label} | {cells[0]} | {cells[1]} |")
        cmd = (st["tern"] or st["floor"])["command"].replace(str(b.strace), "strace")
        L.append("")
        L.append(f"Command: `{cmd}` attached after 20 warm-up messages, while `smtp-source` sends "
                 f"{M} messages at c={CONC} (and again at c=1); per message = calls / {M}; failed = calls that returned an error (EAGAIN for reads and accept4 on a drained socket). strace slows every syscall down a "
                 f"lot, so more sessions end in the same loop turn than without it (more syncfs, fewer "
                 f"fdatasync + fsync pairs): compare the two columns, not the absolute batching.")

    if E:
        L.append("\n## Errors\n")
        for k, e in E.items():
            L.append(f"- {k}: {e}")
    held = [(k, v["delivered_while_held"]) for k, v in R.items()
            if isinstance(v, dict) and v.get("delivered_while_held")]
    for k, d in held:
        L.append(f"- {k}: the sink received {d} messages although delivery was held")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--messages", type=int, default=2000, help="messages per timed run (default 2000)")
    ap.add_argument("--warmup", type=int, default=100, help="warm-up messages before each timed run (default 100)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions, interleaved; median shown (default 3)")
    ap.add_argument("--strace-messages", type=int, default=200,
                    help="messages accepted under strace for the syscall counts (default 200)")
    ap.add_argument("--run-cap", type=float, default=60.0,
                    help="seconds a timed run may take; a capped run reports its rate so far, marked † (default 60)")
    ap.add_argument("--quick", action="store_true", help="N=300, warm-up 30, 100 messages under strace, cap 20s")
    ap.add_argument("--tern", default=os.environ.get("TERN_BIN", str(ROOT / "target" / "release" / "tern")),
                    help="tern binary (default: $TERN_BIN or target/release/tern)")
    ap.add_argument("--floor", default=os.environ.get("FLOOR_BIN", str(ROOT / "target" / "release" / "examples" / "floor")),
                    help="floor binary (default: $FLOOR_BIN or target/release/examples/floor)")
    ap.add_argument("--workdir", default=str(ROOT / "target" / "bench-work"),
                    help="parent of the run dir, on the disk you care about (default target/bench-work)")
    ap.add_argument("-c", "--conc", type=int, default=CONC,
                    help=f"concurrent sessions of the timed runs (default {CONC}; the syscall counts use c={CONC} and c=1)")
    ap.add_argument("--no-reference", action="store_true", help="skip Postfix")
    ap.add_argument("--no-strace", action="store_true", help="skip the syscall counts")
    ap.add_argument("--keep", action="store_true", help="keep the run dir")
    ap.add_argument("--json", metavar="FILE", help="also write all raw figures as JSON")
    args = ap.parse_args()
    if args.quick:
        args.messages, args.warmup, args.strace_messages = 300, 30, 100
        args.run_cap = min(args.run_cap, 20.0)
    if min(args.messages, args.reps, args.strace_messages, args.conc) < 1 or args.warmup < 0:
        ap.error("counts must be positive")

    b = bench.Bench(args)
    b.floor = Path(args.floor)
    for what, path in (("smtp-source", b.smtp_source), ("smtp-sink", b.smtp_sink)):
        if not path:
            sys.exit(f"{what} not found: install the Debian package `postfix` (it need not be configured)")
    for what, path, how in (("tern", b.tern, "cargo build --release"),
                            ("floor", b.floor, "cargo build --release --example floor")):
        if not os.access(path, os.X_OK):
            sys.exit(f"{path} missing: run `{how}` (or `make bench-floor`)")
    if args.no_strace:
        b.strace = None
    bench.setup_process(4096)
    b.work = bench.new_run_dir(args.workdir, "floor")
    env = bench.run_env(b.tern, b.work)
    t0 = time.monotonic()
    ok = False
    try:
        b.results["reference_skipped"] = "not reached"
        b.sink = bench.Sink(b)  # tern's smarthost (held: nothing should reach it)
        why = "--no-reference given" if args.no_reference else bench.Postfix.unavailable(b)
        if why:
            log(f"Postfix skipped: {why}")
        plan = [("tern", Tern), ("floor", Floor)] + ([("postfix", bench.Postfix)] if why is None else [])
        for rep in range(args.reps):
            for key, kind in plan:
                name = f"{key}-r{rep + 1}"
                b.measure(f"{key}#{rep + 1}", lambda kind=kind, name=name: accept_run(b, kind, name), into=key)
        for key, _ in plan:
            summarize(b, key)
        if b.strace:
            for key, kind in (("tern", Tern), ("floor", Floor)):
                b.measure(f"strace_{key}", lambda kind=kind, key=key: syscall_audit(b, kind, f"strace-{key}"))
            # c=1: every turn ends one message, so both must show the
            # lone-message commit (fdatasync + fsync) for every message
            for key, kind in (("tern", Tern), ("floor", Floor)):
                b.measure(f"strace_{key}_c1",
                          lambda kind=kind, key=key: syscall_audit(b, kind, f"strace-{key}-c1", conc=1))
        b.results["reference_skipped"] = why
        if why is None:
            b.results["postfix_version"] = subprocess.run(
                [bench.tool("postconf"), "-d", "-h", "mail_version"], capture_output=True, text=True).stdout.strip()
        ok = True
    except KeyboardInterrupt as e:
        env["interrupted"] = str(e) or "SIGINT"
        log(f"interrupted ({env['interrupted']}): stopping everything")
    except BenchError as e:
        env["interrupted"] = f"error: {e}"
        log(f"aborted: {e}")
    finally:
        bench.end_run(b, args.keep)
    for key in ("tern", "floor", "postfix"):
        if key in b.results and "rate" not in b.results[key]:
            summarize(b, key)
    env["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    env["runtime_s"] = round(time.monotonic() - t0, 1)
    print(report(b, env))
    log(f"done in {env['runtime_s']}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "args": vars(args), "results": b.results, "errors": b.errors},
                      f, indent=1, default=str)
    return 130 if not ok else 1 if b.errors else 0


Tern = bench.Tern

if __name__ == "__main__":
    sys.exit(main())
