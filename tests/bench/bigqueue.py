#!/usr/bin/env python3
"""bigqueue.py - the "big queue" workload (issue 16, workload 4). See
tests/bench/README.md.

Python 3 standard library only; reuses bench.py (processes, smtp-sink,
smtp-source, free ports, PSS). Loopback only; every tern config sets
`dns_servers = 127.0.0.1:1`.

1. relay rate: a fresh tern relays R messages (2 KB, c=20) to smtp-sink
   (the same figure as `make bench`'s "relay 2 KB, c=20"), for comparison;
2. fill: a tern with `hold_outbound = yes` accepts N messages (2 KB, c=20,
   one session per message) and is stopped (SIGTERM);
3. start: the same tern is started again on that spool; (a) = time from
   spawning it to the first 220 banner read on its SMTP port; while it
   works through the queue a probe reads a banner every 0.2 s (worst
   latency reported); then it is left until its CPU time stops moving
   ("at rest");
4. (b) = PSS (/proc/PID/smaps_rollup) at rest with the N messages queued;
5. (c) = `tern queue flush`: N / time from running the command until the
   sink has counted N messages (the config's smarthost is the sink).

With root and Postfix installed, the same for a throwaway Postfix instance
(hold queue via `smtpd_client_restrictions = check_client_access
static:HOLD`, released with `postsuper -H ALL` + `postqueue -f`; its PSS is
the sum over all its processes).
"""
import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (tests/bench/bench.py)
from bench import BenchError, log, memory, wait_until  # noqa: E402

TARGET_START_S = 1.0
TARGET_PSS_KIB = 8 * 1024
TARGET_FLUSH_RATIO = 0.8


def cpu_ticks(pid):
    """utime + stime of pid (clock ticks), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read().decode("latin-1")
    except OSError:
        return None
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def pss_total(pids):
    vals = [memory(p)["pss_kib"] for p in pids]
    vals = [v for v in vals if v is not None]
    return sum(vals) if vals else None


def read_banner(port, timeout):
    """Connect and read the 220 banner; returns True when read."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=max(0.1, end - time.monotonic())) as s:
                s.settimeout(max(0.1, end - time.monotonic()))
                buf = b""
                while b"\n" not in buf:
                    d = s.recv(512)
                    if not d:
                        break
                    buf += d
                if buf.startswith(b"220"):
                    try:
                        s.sendall(b"QUIT\r\n")
                    except OSError:
                        pass
                    return True
        except (ConnectionRefusedError, socket.timeout, OSError):
            pass
        time.sleep(0.005)
    return False


def watch_until_rest(pids, port, quiet, cap):
    """Probe the banner every 0.2 s until the CPU time of pids has not moved
    for `quiet` seconds. Returns (seconds until rest, worst banner latency,
    probes, failed probes)."""
    t0 = time.monotonic()
    last, still_since = None, None
    worst, probes, failed = 0.0, 0, 0
    while time.monotonic() - t0 < cap:
        p0 = time.monotonic()
        ok = read_banner(port, 10)
        lat = time.monotonic() - p0
        probes += 1
        failed += 0 if ok else 1
        worst = max(worst, lat)
        ticks = sum(cpu_ticks(p) or 0 for p in pids)
        now = time.monotonic()
        if ticks != last:
            last, still_since = ticks, now
        elif now - still_since >= quiet:
            return still_since - t0, worst, probes, failed
        time.sleep(0.2)
    return None, worst, probes, failed


def count_files(d):
    try:
        return sum(1 for _ in os.scandir(d))
    except OSError:
        return None


class Run:
    def __init__(self, args):
        self.args = args
        self.b = bench.Bench(args)
        self.res = {}
        self.errors = {}

    def step(self, key, fn):
        t0 = time.monotonic()
        try:
            fn()
        except (BenchError, OSError, subprocess.SubprocessError) as e:
            self.errors[key] = f"{type(e).__name__}: {e}"
            log(f"{key}: FAILED: {self.errors[key]}")
            return False
        finally:
            self.b.procs.kill_descendants(f"after {key}")
        log(f"{key}: done ({time.monotonic() - t0:.1f}s)")
        return True

    # -- relay reference ----------------------------------------------------

    def relay(self):
        a, b = self.args, self.b
        b.args = argparse.Namespace(messages=a.relay_n, warmup=a.warmup, run_cap=a.cap)
        try:
            with bench.Tern(b, "relay") as t:
                r = bench.throughput(b, t, a.conc, bench.SMALL, False)
        finally:
            b.args = a
        self.res["relay"] = r
        log(f"relay 2 KB c={a.conc}: {r['rate']:.0f} msg/s")

    # -- tern ------------------------------------------------------------------

    def fill(self, mta, spool_count):
        a, b = self.args, self.b
        t0 = time.monotonic()
        bench.run_source(b, mta, a.conc, a.n, bench.SMALL, "fill.log", a.cap)
        el = time.monotonic() - t0
        n = spool_count()
        log(f"{mta.name}: filled {n} messages in {el:.1f}s ({a.n / el:.0f} msg/s)")
        if n != a.n:
            raise BenchError(f"{mta.name}: {n} messages queued, expected {a.n}")
        return {"fill_s": round(el, 2), "fill_rate": a.n / el, "queued": n}

    def tern(self):
        a, b = self.args, self.b
        r = self.res["tern"] = {}
        t = bench.Tern(b, "bigqueue", hold=True)
        msg = t.store / "spool" / "msg"
        try:
            t.start()
            r.update(self.fill(t, lambda: count_files(msg)))
            t.stop()
            os.sync()
            time.sleep(1)
            # (a) start with N queued
            t0 = time.monotonic()
            t.start()
            if not read_banner(t.port, a.cap):
                raise BenchError("no banner after restart: " + bench.tail(t.dir / "tern.log"))
            r["start_s"] = time.monotonic() - t0
            log(f"tern: first banner {r['start_s']:.3f}s after start with {a.n} queued")
            rest, worst, probes, failed = watch_until_rest([t.pid], t.port, a.quiet, a.cap)
            r.update(rest_s=rest, probe_worst_s=worst, probes=probes, probes_failed=failed)
            log(f"tern: at rest {rest}s after the first banner; worst banner latency {worst:.3f}s "
                f"over {probes} probes ({failed} failed)")
            time.sleep(a.settle)
            t.check_alive()
            r["mem"] = memory(t.pid)
            log(f"tern: PSS at rest with {a.n} queued: {r['mem']['pss_kib']} KiB")
            if count_files(msg) != a.n:
                raise BenchError(f"after restart {count_files(msg)} messages in msg/, expected {a.n}")
            # (c) flush
            base = b.sink.count()
            cmd = [str(b.tern), "-c", str(t.dir / "tern.conf"), "queue", "flush"]
            t0 = time.monotonic()
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise BenchError(f"queue flush rc={out.returncode}: {out.stdout} {out.stderr}")
            ok = wait_until(lambda: b.sink.count() >= base + a.n, a.cap, 0.01)
            el = time.monotonic() - t0
            got = b.sink.count() - base
            r["flush_s"] = el
            r["flush_rate"] = got / el
            r["flush_done"] = got
            r["flush_capped"] = not ok
            log(f"tern: flush {got}/{a.n} in {el:.1f}s = {got / el:.0f} msg/s")
            wait_until(lambda: count_files(msg) == 0, 30, 0.1)
            r["left_in_spool"] = count_files(msg)
            t.check_alive()
        finally:
            t.stop()

    # -- Postfix ---------------------------------------------------------------

    def postfix(self):
        a, b = self.args, self.b
        r = self.res["postfix"] = {}
        pf = bench.Postfix(b, "postfix-bigqueue", hold=True)
        queue = pf.store / "queue"
        conf = pf.dir / "conf"
        try:
            pf.start()
            r.update(self.fill(pf, lambda: count_files_tree(queue / "hold")))
            pf.stop()
            os.sync()
            time.sleep(1)
            t0 = time.monotonic()
            pf.start()
            if not read_banner(pf.port, a.cap):
                raise BenchError("postfix: no banner after restart")
            r["start_s"] = time.monotonic() - t0
            log(f"postfix: first banner {r['start_s']:.3f}s after start with {a.n} held")
            pids = [pf.master] + bench.descendants(pf.master)
            rest, worst, probes, failed = watch_until_rest(pids, pf.port, a.quiet, a.cap)
            r.update(rest_s=rest, probe_worst_s=worst, probes=probes, probes_failed=failed)
            time.sleep(a.settle)
            pids = [pf.master] + bench.descendants(pf.master)
            r["pss_kib"] = pss_total(pids)
            r["procs"] = len(pids)
            log(f"postfix: PSS at rest ({len(pids)} processes): {r['pss_kib']} KiB")
            base = b.sink.count()
            t0 = time.monotonic()
            for cmd in ([bench.tool("postsuper"), "-c", str(conf), "-H", "ALL"],
                        [bench.tool("postqueue"), "-c", str(conf), "-f"]):
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.cap)
                if out.returncode != 0:
                    raise BenchError(f"{' '.join(cmd)} rc={out.returncode}: {out.stderr.strip()}")
            r["release_s"] = time.monotonic() - t0
            ok = wait_until(lambda: b.sink.count() >= base + a.n, a.cap, 0.01)
            el = time.monotonic() - t0
            got = b.sink.count() - base
            r.update(flush_s=el, flush_rate=got / el, flush_done=got, flush_capped=not ok)
            log(f"postfix: flush {got}/{a.n} in {el:.1f}s = {got / el:.0f} msg/s")
        finally:
            pf.stop()

    def run(self):
        a, b = self.args, self.b
        b.sink = bench.Sink(b)
        log(f"smtp-sink on 127.0.0.1:{b.sink.port}; work dir {b.work}")
        self.step("relay", self.relay)
        self.step("tern", self.tern)
        why = "--no-reference given" if a.no_reference else bench.Postfix.unavailable(b)
        self.res["reference_skipped"] = why
        if why:
            log(f"Postfix reference skipped: {why}")
        else:
            self.step("postfix", self.postfix)
            self.res["postfix_version"] = subprocess.run(
                [bench.tool("postconf"), "-d", "-h", "mail_version"], capture_output=True, text=True).stdout.strip()


def count_files_tree(d):
    n = 0
    for _root, _dirs, files in os.walk(d):
        n += len(files)
    return n


def fmt(v, spec, unit=""):
    return "n/a" if v is None else f"{v:{spec}}{unit}"


def report(run, env):
    a, R, E = run.args, run.res, run.errors
    t, p, rel = R.get("tern", {}), R.get("postfix"), R.get("relay", {})
    pf = p is not None and R.get("reference_skipped") is None

    def pcell(v, spec, unit=""):
        return fmt(v, spec, unit) if pf else "–"

    def ok(cond):
        return "n/a" if cond is None else ("yes" if cond else "**no**")

    pss = (t.get("mem") or {}).get("pss_kib")
    rrate = rel.get("rate")
    frate = t.get("flush_rate")
    ratio = frate / rrate if frate and rrate else None
    rows = [
        (f"fill: accept {a.n:,} held messages, 2 KB, c={a.conc} (msg/s)", fmt(t.get("fill_rate"), ",.0f"),
         pcell((p or {}).get("fill_rate"), ",.0f"), "", "", "A"),
        (f"(a) start with {a.n:,} queued → first 220 banner (s)", fmt(t.get("start_s"), ".3f"),
         pcell((p or {}).get("start_s"), ".3f"), f"≤ {TARGET_START_S:g}",
         ok(None if t.get("start_s") is None else t["start_s"] <= TARGET_START_S), "B"),
        ("    worst banner latency until at rest (s)", fmt(t.get("probe_worst_s"), ".3f"),
         pcell((p or {}).get("probe_worst_s"), ".3f"), "", "", "B"),
        ("    first banner → at rest (s)", fmt(t.get("rest_s"), ".1f"),
         pcell((p or {}).get("rest_s"), ".1f"), "", "", "B"),
        (f"(b) PSS at rest with {a.n:,} queued (KiB)", fmt(pss, ",.0f"),
         pcell((p or {}).get("pss_kib"), ",.0f") + (f" ({p.get('procs')} processes)" if pf else ""),
         f"≤ {TARGET_PSS_KIB:,}", ok(None if pss is None else pss <= TARGET_PSS_KIB), "C"),
        ("    VmRSS / VmHWM (KiB)", f"{fmt((t.get('mem') or {}).get('vmrss_kib'), ',.0f')} / "
         f"{fmt((t.get('mem') or {}).get('vmhwm_kib'), ',.0f')}", "–", "", "", "C"),
        (f"(c) queue flush of {a.n:,} to the sink (msg/s)",
         fmt(frate, ",.0f") + ("†" if t.get("flush_capped") else ""),
         pcell((p or {}).get("flush_rate"), ",.0f") + ("†" if pf and p.get("flush_capped") else ""),
         f"≥ {TARGET_FLUSH_RATIO:.0%} of relay", ok(None if ratio is None else ratio >= TARGET_FLUSH_RATIO), "D"),
        (f"    relay 2 KB c={a.conc}, same run (msg/s)", fmt(rrate, ",.0f"), "–", "", "", "E"),
        ("    flush / relay", fmt(ratio, ".2f"), "–", "", "", "D"),
    ]
    L = ["# tern big-queue benchmark (issue 16, workload 4)", ""]
    L.append(f"- date: {env['date']}")
    L.append(f"- command: `{env['command']}`")
    L.append(f"- tern: {env['tern_version']} ({run.b.tern})")
    L.append(f"- host: {env['host']}; load average at start {env['loadavg_start']}, at end {env.get('loadavg_end', '?')}")
    L.append(f"- spool: {env['work_dir']} ({env['work_fs']}); loopback only, `dns_servers = 127.0.0.1:1`")
    ref = R.get("reference_skipped")
    L.append(f"- reference: Postfix {R.get('postfix_version', '?')} (throwaway instance, chroot off)"
             if ref is None else f"- reference: skipped: {ref}")
    L.append("")
    L.append("| figure | tern | Postfix | target | met |  how |")
    L.append("|---|---:|---:|---:|:---:|---|")
    for row in rows:
        L.append("| " + " | ".join(row) + " |")
    src = " ".join(bench.source_cmd("smtp-source", "PORT", a.conc, a.n, bench.SMALL))
    L.append("\nHow each figure was measured:\n")
    L.append(f"- A: `{src}` against `hold_outbound = yes` (Postfix: `smtpd_client_restrictions = "
             f"check_client_access static:HOLD`); N / time until smtp-source exited; the queue is "
             f"then counted (spool/msg, Postfix: queue/hold) and stopped with SIGTERM, then `sync`")
    L.append(f"- B: time from spawning the MTA again on that queue to the first `220` read on a new "
             f"connection to its port (connects retried every 5 ms); then a connection reads a banner every "
             f"0.2 s until the MTA's CPU time (utime+stime, all its processes) has not moved for "
             f"{a.quiet:g} s (\"at rest\")")
    L.append(f"- C: Pss of /proc/PID/smaps_rollup {a.settle:g} s after rest (Postfix: summed over master "
             f"and its children)")
    L.append(f"- D: tern: `tern -c CONF queue flush` (Postfix: `postsuper -H ALL; postqueue -f`); N / time "
             f"from the command until smtp-sink counted N messages; target: ≥ {TARGET_FLUSH_RATIO:.0%} of E")
    L.append(f"- E: a fresh tern relays {a.relay_n} messages (after {a.warmup} warm-up) "
             f"`{' '.join(bench.source_cmd('smtp-source', 'PORT', a.conc, a.relay_n, bench.SMALL))}`; "
             f"N / time until the sink counted N (as `make bench`'s relay 2 KB c=20)")
    if any(x.get("flush_capped") for x in (t, p or {})):
        L.append(f"\n† cap of {a.cap:.0f}s reached: messages delivered / elapsed time.")
    if t.get("left_in_spool"):
        L.append(f"\n- tern: {t['left_in_spool']} messages still in spool/msg after the flush")
    if E:
        L.append("\nErrors:\n")
        for k, e in E.items():
            L.append(f"- {k}: {e}")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--messages", dest="n", type=int, default=100000,
                    help="messages in the big queue (default 100000)")
    ap.add_argument("--conc", type=int, default=20, help="smtp-source sessions in parallel (default 20)")
    ap.add_argument("--relay-n", type=int, default=5000, help="messages of the relay reference run (default 5000)")
    ap.add_argument("--warmup", type=int, default=100, help="warm-up of the relay run (default 100)")
    ap.add_argument("--quiet", type=float, default=2.0,
                    help="seconds without CPU time that count as at rest (default 2)")
    ap.add_argument("--settle", type=float, default=1.0, help="wait before the PSS sample (default 1)")
    ap.add_argument("--cap", type=float, default=900.0, help="seconds any one phase may take (default 900)")
    ap.add_argument("--tern", default=os.environ.get("TERN_BIN", str(bench.ROOT / "target" / "release" / "tern")))
    ap.add_argument("--workdir", default=str(bench.ROOT / "target" / "bench-work"))
    ap.add_argument("--no-reference", action="store_true", help="skip the Postfix reference")
    ap.add_argument("--keep", action="store_true", help="keep the run dir")
    args = ap.parse_args()
    if min(args.n, args.conc, args.relay_n) < 1:
        ap.error("counts must be positive")
    run = Run(args)
    b = run.b
    for name, path in (("smtp-source", b.smtp_source), ("smtp-sink", b.smtp_sink)):
        if not path:
            sys.exit(f"{name} not found: install the Debian package `postfix`")
    if not os.access(b.tern, os.X_OK):
        sys.exit(f"{b.tern} missing: run `cargo build --release` (or `make bench-bigqueue`)")
    bench.setup_process(4096)
    b.work = bench.new_run_dir(args.workdir, "bigqueue")
    env = bench.run_env(b.tern, b.work)
    t0 = time.monotonic()
    ok = False
    try:
        run.run()
        ok = True
    except KeyboardInterrupt as e:
        env["interrupted"] = str(e) or "SIGINT"
        log(f"interrupted ({env['interrupted']})")
    except BenchError as e:
        run.errors["setup"] = str(e)
        log(f"aborted: {e}")
    finally:
        bench.end_run(b, args.keep)
    env["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    print(report(run, env))
    log(f"done in {time.monotonic() - t0:.1f}s")
    return 130 if not ok else 1 if run.errors else 0


if __name__ == "__main__":
    sys.exit(main())
