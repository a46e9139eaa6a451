#!/usr/bin/env python3
"""router_class.py - tern and Postfix side by side in a router-sized box
(`make bench-router`, issue 16 workload 1). See tests/bench/README.md.

Each MTA runs inside a fresh cgroup with a memory limit of 16 MiB (swap
included) and a CPU quota of 10 % of one core; the load generators
(smtp-source, smtp-sink, this script and its NOOP probe) stay outside.
Per MTA, each workload on a fresh instance in a fresh group:

  a) relay: smtp-source -> MTA -> smtp-sink (the smarthost), N messages of
     2 KB at 20 sessions at a time: msg/s, refused or failed sessions;
  b) idle: 1,000 sessions that have read the 220 banner: how many were
     accepted, refused or dropped, and the group's memory while held;
  c) during both, a probe client holding one SMTP session sends NOOP every
     50 ms: worst and p99 round trip;
  d) after both: OOM kills in the group, processes lost, MTA still answering.

Python 3 standard library only; root (cgroups, a private Postfix instance);
loopback only, every tern config sets `dns_servers = 127.0.0.1:1`. Reuses
bench.py (processes, smtp-sink, tern and Postfix instances, idle sessions).
Markdown table on stdout, progress on stderr.
"""
import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
from bench import BenchError, log  # noqa: E402

CG_PREFIX = "tern-router"


# ---------------------------------------------------------------------------
# cgroups (v1 as on this project's VM, v2 where /sys/fs/cgroup is cgroup2)
# ---------------------------------------------------------------------------

def cgroup_mounts():
    """{"v2": path} if /sys/fs/cgroup is a cgroup2 mount, else
    {controller: mount point} of the v1 hierarchies."""
    v1, v2 = {}, None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mnt = left.split()[4]
            fstype, _src, opts = (right.split() + ["", "", ""])[:3]
            if fstype == "cgroup2" and mnt == "/sys/fs/cgroup":
                v2 = mnt
            elif fstype == "cgroup":
                for o in opts.split(","):
                    if o in ("memory", "cpu", "cpuacct"):
                        v1.setdefault(o, mnt)
    if v2:
        return {"v2": v2}
    return v1


def read_int(path):
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_kv(path):
    out = {}
    try:
        for line in Path(path).read_text().splitlines():
            f = line.split()
            if len(f) == 2 and f[1].lstrip("-").isdigit():
                out[f[0]] = int(f[1])
    except OSError:
        pass
    return out


class Cgroup:
    """One group, created at the top of each hierarchy (v1: memory, cpu and
    cpuacct, the last one only to read CPU time; v2: one directory)."""

    def __init__(self, name, mem_bytes, cpu_pct):
        self.name, self.mem_bytes, self.cpu_pct = name, mem_bytes, cpu_pct
        m = cgroup_mounts()
        self.v2 = "v2" in m
        if self.v2:
            self.dirs = {"v2": Path(m["v2"]) / name}
        else:
            missing = [c for c in ("memory", "cpu") if c not in m]
            if missing:
                raise BenchError(f"no cgroup v1 hierarchy for {', '.join(missing)} and no cgroup2 "
                                 f"at /sys/fs/cgroup")
            self.dirs = {c: Path(m[c]) / name for c in ("memory", "cpu", "cpuacct") if c in m}
            if self.dirs.get("cpuacct") == self.dirs["cpu"]:  # co-mounted cpu,cpuacct
                del self.dirs["cpuacct"]
        self.settings = []  # (file, value) as written, for the report
        self.created = []

    @property
    def mem(self):
        return self.dirs["v2" if self.v2 else "memory"]

    @property
    def cpu(self):
        return self.dirs["v2" if self.v2 else "cpu"]

    def write(self, path, value, record=True):
        Path(path).write_text(f"{value}\n")
        if record:
            self.settings.append((str(path).replace(self.name, "GROUP"), value))

    def create(self):
        for d in dict.fromkeys(self.dirs.values()):
            d.mkdir()
            self.created.append(d)
        period = 100000
        quota = int(period * self.cpu_pct / 100)
        if self.v2:
            root = self.mem.parent
            enabled = (root / "cgroup.subtree_control").read_text().split()
            want = [c for c in ("memory", "cpu") if c not in enabled]
            if want:
                self.write(root / "cgroup.subtree_control", " ".join("+" + c for c in want))
            self.write(self.mem / "memory.max", self.mem_bytes)
            if (self.mem / "memory.swap.max").exists():
                self.write(self.mem / "memory.swap.max", 0)
            self.write(self.cpu / "cpu.max", f"{quota} {period}")
        else:
            self.write(self.mem / "memory.limit_in_bytes", self.mem_bytes)
            if (self.mem / "memory.memsw.limit_in_bytes").exists():
                self.write(self.mem / "memory.memsw.limit_in_bytes", self.mem_bytes)
            self.write(self.cpu / "cpu.cfs_period_us", period)
            self.write(self.cpu / "cpu.cfs_quota_us", quota)
        return self

    def procs_files(self):
        return [str(d / "cgroup.procs") for d in dict.fromkeys(self.dirs.values())]

    def launch(self):
        """Command prefix: a shell that moves itself into the group, then
        execs the MTA's command, so every process the MTA forks is inside."""
        script = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 111; shift; n=$((n-1)); done; ' \
                 'exec "$@"'
        files = self.procs_files()
        return ["/bin/sh", "-c", script, "sh", str(len(files)), *files]

    def pids(self):
        try:
            return [int(x) for x in (self.mem / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def reset_peak(self):
        f = self.mem / ("memory.peak" if self.v2 else "memory.max_usage_in_bytes")
        try:
            self.write(f, 0, record=False)  # v1: resets; v2 (Linux >= 6.12): resets for this fd
        except OSError:
            pass

    def usage(self):
        return read_int(self.mem / ("memory.current" if self.v2 else "memory.usage_in_bytes"))

    def peak(self):
        return read_int(self.mem / ("memory.peak" if self.v2 else "memory.max_usage_in_bytes"))

    def counters(self):
        """Counters that only grow: OOM kills, limit hits, CPU time, throttling."""
        if self.v2:
            ev = read_kv(self.mem / "memory.events")
            cs = read_kv(self.cpu / "cpu.stat")
            return {"oom_kill": ev.get("oom_kill"), "oom": ev.get("oom"),
                    "cpu_s": cs["usage_usec"] / 1e6 if "usage_usec" in cs else None,
                    "nr_throttled": cs.get("nr_throttled"),
                    "throttled_s": cs["throttled_usec"] / 1e6 if "throttled_usec" in cs else None}
        oc = read_kv(self.mem / "memory.oom_control")
        cs = read_kv(self.cpu / "cpu.stat")
        acct = read_int(self.dirs["cpuacct"] / "cpuacct.usage") if "cpuacct" in self.dirs else None
        return {"oom_kill": oc.get("oom_kill"), "under_oom": oc.get("under_oom"),
                "cpu_s": acct / 1e9 if acct is not None else None,
                "nr_throttled": cs.get("nr_throttled"),
                "throttled_s": cs["throttled_time"] / 1e9 if "throttled_time" in cs else None}

    def mem_detail(self):
        st = read_kv(self.mem / "memory.stat")
        if self.v2:
            d = {"anon": st.get("anon"), "file": st.get("file"), "kernel": st.get("kernel"), "sock": st.get("sock")}
        else:
            d = {"anon": st.get("rss"), "file": st.get("cache"),
                 "kernel": read_int(self.mem / "memory.kmem.usage_in_bytes"),
                 "sock": read_int(self.mem / "memory.kmem.tcp.usage_in_bytes")}
        d["usage"] = self.usage()
        pss = [bench.memory(p)["pss_kib"] for p in self.pids()]
        d["pss_kib"] = sum(x for x in pss if x is not None)
        d["procs"] = len(pss)
        return d

    def destroy(self):
        """SIGKILL whatever is left inside (only processes we started are
        there), then remove the directories."""
        for _ in range(50):
            left = self.pids()
            if not left:
                break
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for d in reversed(self.created):
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                log(f"could not remove {d}")
        self.created = []


def oom_victims(group):
    """Processes the kernel OOM-killed in this group, from its log (`dmesg`
    lines `oom-kill:...,oom_memcg=/GROUP,...,task=NAME,pid=PID`); None when
    the kernel log is unreadable."""
    try:
        r = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if r.returncode != 0:
        return None
    return re.findall(rf"oom_memcg=/{re.escape(group)},[^\n]*?task=([^,\s]+),pid=(\d+)", r.stdout)


def comm(pid):
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


# ---------------------------------------------------------------------------
# the NOOP probe: a separate process (outside the group), one session
# ---------------------------------------------------------------------------

def read_reply(f):
    lines = []
    while True:
        line = f.readline()
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return lines


def probe_main(port, interval, timeout):
    """One SMTP session: EHLO, then NOOP every `interval` s. Prints
    `RTT start_monotonic ms` per NOOP; `ERR start_monotonic what` when the
    session breaks (then reconnects after 0.5 s); `UP t` once in session."""
    def say(*a):
        print(*a, flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        t = time.monotonic()
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            f = s.makefile("rb")
            r = read_reply(f)
            if not r[0].startswith(b"220"):
                raise ConnectionError(f"greeting {r[0][:60]!r}")
            s.sendall(b"EHLO probe.test\r\n")
            r = read_reply(f)
            if not r[-1].startswith(b"250"):
                raise ConnectionError(f"EHLO: {r[-1][:60]!r}")
            say(f"UP {time.monotonic():.6f}")
            while True:
                t = time.monotonic()
                s.sendall(b"NOOP\r\n")
                r = read_reply(f)
                t1 = time.monotonic()
                if not r[0].startswith(b"250"):
                    raise ConnectionError(f"NOOP: {r[0][:60]!r}")
                say(f"RTT {t:.6f} {(t1 - t) * 1000:.3f}")
                time.sleep(max(0.0, interval - (time.monotonic() - t)))
        except (OSError, ConnectionError) as e:
            what = "timeout" if isinstance(e, socket.timeout) else f"{type(e).__name__}: {e}"
            say(f"ERR {t:.6f} {(time.monotonic() - t) * 1000:.3f} {what}")
            try:
                s.close()
            except (OSError, UnboundLocalError):
                pass
            time.sleep(0.5)


class Probe:
    def __init__(self, ctx, mta):
        self.log = mta.dir / "probe.log"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--probe", str(mta.port),
               "--probe-interval", str(ctx.args.probe_interval), "--probe-timeout", str(ctx.args.probe_timeout)]
        self.procs = ctx.bench.procs
        self.p = self.procs.spawn("probe", cmd, self.log)
        if not bench.wait_until(lambda: "UP " in self.text() or self.p.poll() is not None, 60, 0.05) \
                or self.p.poll() is not None:
            raise BenchError("NOOP probe got no session: " + bench.tail(self.log))

    def text(self):
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def window(self, t0, t1):
        rtts, errs, waits = [], [], []
        for line in self.text().splitlines():
            f = line.split(None, 3)
            if len(f) >= 3 and f[0] in ("RTT", "ERR"):
                try:
                    t, ms = float(f[1]), float(f[2])
                except ValueError:
                    continue
                if t0 <= t <= t1:
                    if f[0] == "RTT":
                        rtts.append(ms)
                    else:
                        errs.append(f"{f[3] if len(f) > 3 else '?'} after {ms:.0f} ms")
                        waits.append(ms)
        rtts.sort()
        res = {"noops": len(rtts), "errors": errs}
        if rtts:
            res.update(worst_ms=rtts[-1], p99_ms=rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))],
                       median_ms=rtts[len(rtts) // 2])
        if waits and max(waits) > res.get("worst_ms", 0):
            # a NOOP (or the reconnect) waited this long, then the session broke
            res["worst_ms"], res["worst_lost"] = max(waits), True
        return res

    def stop(self):
        self.procs.stop(self.p, signal.SIGTERM, 5)


def answers(port, timeout=30.0):
    """A fresh session gets its 220 and a 250 to NOOP within timeout."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            f = s.makefile("rb")
            r = read_reply(f)
            if not r[0].startswith(b"220"):
                return False, f"greeting {r[0][:60]!r}"
            s.sendall(b"NOOP\r\n")
            r = read_reply(f)
            if not r[0].startswith(b"250"):
                return False, f"NOOP: {r[0][:60]!r}"
            s.sendall(b"QUIT\r\n")
            return True, ""
    except (OSError, ConnectionError) as e:
        return False, f"{type(e).__name__}: {e}"


# ---------------------------------------------------------------------------
# workloads
# ---------------------------------------------------------------------------

def source_cmd(ctx, port, n):
    # bench.py's command line plus -A: a 4xx/5xx reply is a warning, not the
    # end of the whole smtp-source run (I/O errors still are)
    cmd = bench.source_cmd(ctx.bench.smtp_source, port, ctx.args.conc, n, bench.SMALL)
    return cmd[:1] + ["-A"] + cmd[1:]


def relay(ctx, mta, grp):
    """N messages at c=20 through the MTA to the sink. When smtp-source dies
    on a failed session (it stops at the first I/O error) it is started
    again for the messages it had not sent, up to --max-restarts times."""
    a, sink = ctx.args, ctx.bench.sink
    n = a.messages
    base = sink.count()
    t0 = time.monotonic()
    deadline = t0 + a.run_cap
    sent, launches, p, out = 0, 0, None, None
    fatal, refused = [], []
    last, t_last, t_done, t_sink, max_procs, next_sample = base, t0, t0, None, 0, t0
    while True:
        now = time.monotonic()
        c = sink.count()
        if c != last:
            last, t_last = c, now
        if c >= base + n:
            t_sink = now
            break
        if now >= deadline:
            break
        if now >= next_sample:
            max_procs = max(max_procs, len(grp.pids()))
            next_sample = now + 0.25
        if p is not None and p.poll() is not None:
            rc = ctx.bench.procs.wait(p, 10)
            text = out.read_text(errors="replace") if out.is_file() else ""
            fatal += [m for m in re.findall(r"fatal: ([^\r\n]*)", text)] or ([f"rc={rc}"] if rc else [])
            refused += re.findall(r"warning: ([^\r\n]*rejected[^\r\n]*)", text)
            sent += (n - sent) if rc == 0 else bench.acked(out)
            p, t_done = None, now
        if p is None and sent < n and launches <= a.max_restarts:
            launches += 1
            out = mta.dir / f"source-{launches}.log"
            p = ctx.bench.procs.spawn("smtp-source", source_cmd(ctx, mta.port, n - sent), out)
        if p is None and now - max(t_last, t_done) > a.drain_wait:
            break  # nothing left to send and the sink has been still for a while
        time.sleep(0.01)
    if p is not None:
        ctx.bench.procs.stop(p, signal.SIGKILL)
    got = last - base
    res = {"n": n, "delivered": got, "source_runs": launches, "fatal": fatal, "refused": refused,
           "max_procs": max_procs}
    if t_sink is not None:
        res.update(rate=n / (t_sink - t0), elapsed_s=round(t_sink - t0, 3))
    else:
        t_end = time.monotonic()
        res.update(rate=got / (t_end - t0), elapsed_s=round(t_end - t0, 3), last_s=round(t_last - t0, 3),
                   partial=True, why="run cap" if t_end >= deadline else
                   f"nothing more arrived for {a.drain_wait:.0f} s after smtp-source finished")
        log(f"{mta.name}: only {got}/{n} messages reached the sink ({res['why']})")
    return res


def idle(ctx, mta, grp):
    """Open K sessions that read the 220 banner (<= 64 handshakes in
    flight), hold them --settle seconds, count those still open."""
    a = ctx.args
    stats = {}
    socks, err = bench.open_idle(mta.port, a.idle, timeout=a.idle_timeout, stats=stats)
    try:
        time.sleep(a.settle)
        held = bench.still_open(socks)
        detail = grp.mem_detail()
    finally:
        for s in socks:
            s.close()
    return {"k": a.idle, "stats": stats, "held": held, "dropped": len(socks) - held,
            "first_error": err, "at_hold": detail, "max_procs": detail["procs"]}


# ---------------------------------------------------------------------------
# one (MTA, workload) cell: fresh group, fresh instance
# ---------------------------------------------------------------------------

class Ctx:
    def __init__(self, args):
        self.args = args
        self.bench = bench.Bench(argparse.Namespace(tern=args.tern))
        self.cgroups = []


def run_cell(ctx, kind, workload):
    a = ctx.args
    name = f"{kind}-{workload}"
    grp = Cgroup(f"{CG_PREFIX}-{os.getpid()}-{name}", a.mem_mib << 20, a.cpu_pct)
    ctx.cgroups.append(grp)
    grp.create()
    if kind == "tern":
        mta = bench.Tern(ctx.bench, name, launch=grp.launch(),
                         conf={"max_connections": a.max_connections,
                               "max_connections_per_ip": a.max_connections})
    else:
        mta = bench.Postfix(ctx.bench, name, launch=grp.launch(),
                            main_cf=f"smtpd_junk_command_limit = {JUNK_LIMIT}\n" +
                            "".join(line + "\n" for line in a.postfix_conf))
    probe = None
    res = {"mta": kind, "workload": workload, "cgroup": grp}
    try:
        t = time.monotonic()
        mta.start()
        res["start_s"] = time.monotonic() - t
        time.sleep(a.settle)
        res["at_rest"] = grp.mem_detail()
        before = {p: comm(p) for p in grp.pids()}
        probe = Probe(ctx, mta)
        time.sleep(0.5)
        grp.reset_peak()
        c0 = grp.counters()
        w0 = time.monotonic()
        res.update((relay if workload == "relay" else idle)(ctx, mta, grp))
        w1 = time.monotonic()
        time.sleep(0.5)
        c1 = grp.counters()
        res["peak"] = grp.peak()
        res["probe"] = probe.window(w0, w1)
        res["delta"] = {k: (c1[k] - c0[k]) if c1.get(k) is not None and c0.get(k) is not None else None
                        for k in c1 if k != "under_oom"}
        res["under_oom"] = c1.get("under_oom")
        res["oom_victims"] = oom_victims(grp.name)
        after = set(grp.pids())
        res["procs_before"] = len(before)
        res["gone"] = sorted(f"{c or '?'}[{p}]" for p, c in before.items() if p not in after)
        main_pid = mta.p.pid if kind == "tern" else mta.master
        running = bench.running(main_pid) and main_pid in after
        ok, why = answers(mta.port)
        res["alive"] = running and ok
        res["alive_detail"] = ("" if running else f"main process {main_pid} gone; ") + why
        log(f"{name}: {summary(res)}")
    except BenchError as e:
        res["error"] = str(e)
        log(f"{name}: FAILED: {e}")
    finally:
        if probe is not None:
            probe.stop()
        try:
            mta.stop()
        finally:
            ctx.bench.procs.kill_descendants(f"after {name}")
            grp.destroy()
    return res


JUNK_LIMIT = 1000000


def summary(r):
    bits = []
    if "rate" in r:
        bits.append(f"{r['rate']:.1f} msg/s")
    if "held" in r:
        bits.append(f"held {r['held']}/{r['k']}")
    if r.get("probe", {}).get("noops"):
        bits.append(f"NOOP worst {r['probe']['worst_ms']:.0f} ms")
    if r.get("peak"):
        bits.append(f"peak {r['peak'] / 1048576:.1f} MiB")
    bits.append(f"oom_kill {r.get('delta', {}).get('oom_kill')}")
    bits.append("alive" if r.get("alive") else "NOT alive")
    return ", ".join(bits)


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def mib(v):
    return "n/a" if v is None else f"{v / 1048576:.1f} MiB"


def kib_mib(v):
    return "n/a" if v is None else f"{v / 1024:.1f} MiB"


def ms(v):
    return "n/a" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def sock_note(h, env):
    if not env["cgroup_v2"]:
        return ""  # v1 charges socket buffers only once memory.kmem.tcp.limit_in_bytes is set
    return f" (sockets {mib(h.get('sock'))})"


def report(ctx, cells, env):
    a = ctx.args
    L = ["# tern vs Postfix in a router-class box (16 MiB, 10 % of a core)", ""]
    L.append(f"- date: {env['date']}")
    L.append(f"- command: `{env['command']}`")
    L.append(f"- tern: {env['tern_version']} ({ctx.bench.tern}); Postfix {env.get('postfix_version', '–')}")
    if env.get("interrupted"):
        L.append(f"- **interrupted ({env['interrupted']}): partial results**")
    L.append(f"- host: {env['host']}; load average at start {env['loadavg_start']}, "
             f"at end {env.get('loadavg_end', '?')}")
    L.append(f"- cgroup {'v2' if env['cgroup_v2'] else 'v1'}: {env['cgroup_settings']}")
    L.append("")
    L.append("| MTA | workload | msg/s | sessions refused / failed | idle sessions held | "
             "NOOP worst / p99 (ms) | peak memory of the group | OOM kills | alive afterwards |")
    L.append("|---|---|---:|---|---|---|---:|---:|---|")
    for r in cells:
        mta = "tern" if r["mta"] == "tern" else "Postfix"
        wl = f"a) relay 2 KB c={a.conc}, N={a.messages}" if r["workload"] == "relay" else f"b) {a.idle} idle"
        if r.get("error"):
            L.append(f"| {mta} | {wl} | error: {r['error'][:200]} | | | | | | |")
            continue
        d = r.get("delta", {})
        if r["workload"] == "relay":
            rate = f"{r['rate']:.1f}"
            if r.get("partial"):
                rate = (f"{r['rate']:.2f} ‡ ({r['delivered']} of {r['n']} delivered in {r['elapsed_s']:.0f} s, "
                        f"the last at {r['last_s']:.0f} s; {r['why']})")
            restarts = r["source_runs"] - 1
            sess = f"{len(r['refused'])} refused / {len(r['fatal'])} failed"
            if restarts:
                sess += f" (smtp-source restarted {restarts}×)"
            held = "–"
        else:
            rate = "–"
            s = r["stats"]
            failed = s.get("closed", 0) + s.get("connect_failed", 0) + s.get("no_banner", 0) + \
                s.get("not_attempted", 0)
            sess = f"{s.get('refused', 0)} refused / {failed} failed"
            parts = [f"{k.replace('_', ' ')} {v}" for k, v in s.items()
                     if k not in ("banner", "refused", "first_error") and v]
            if parts:
                sess += f" ({', '.join(parts)})"
            held = f"{r['held']} of {r['k']} ({s.get('banner', 0)} got the banner, {r['dropped']} dropped later)"
        p = r.get("probe", {})
        noop = f"{'≥' if p.get('worst_lost') else ''}{ms(p.get('worst_ms'))} / {ms(p.get('p99_ms'))} " \
            f"({p.get('noops', 0)} NOOPs)"
        if p.get("errors"):
            noop += f"; session lost {len(p['errors'])}×"
        oom = "n/a" if d.get("oom_kill") is None else str(d["oom_kill"])
        if r.get("oom_victims"):
            names = {}
            for task, _pid in r["oom_victims"]:
                names[task] = names.get(task, 0) + 1
            oom += " (kernel log: " + ", ".join(f"{t} ×{c}" for t, c in names.items()) + ")"
        if r.get("gone"):
            oom += f" ({len(r['gone'])} of {r['procs_before']} processes gone: {', '.join(r['gone'][:6])})"
        alive = "yes" if r.get("alive") else f"**no** ({r.get('alive_detail', '')})"
        peak = mib(r.get("peak"))
        if r.get("peak") is not None and r["peak"] >= r["cgroup"].mem_bytes - (64 << 10):
            peak += " (= limit)"
        L.append(f"| {mta} | {wl} | {rate} | {sess} | {held} | {noop} | {peak} | {oom} | {alive} |")
    rt = {r["mta"]: r for r in cells if r["workload"] == "relay" and not r.get("error")}
    if rt.get("tern") and rt.get("postfix") and rt["postfix"]["rate"] > 0:
        mark = " ‡" if rt["tern"].get("partial") or rt["postfix"].get("partial") else ""
        L.append(f"| **tern/Postfix** | a) relay | **{rt['tern']['rate'] / rt['postfix']['rate']:.2f}**{mark} "
                 f"| | | | | | |")
    else:
        L.append("| **tern/Postfix** | a) relay | – (a rate is missing) | | | | | | |")

    L.append("")
    L.append("Details per cell (group counters over the workload; memory at rest = after start-up, "
             "before the probe; at hold = with the idle sessions open):")
    L.append("")
    L.append("| MTA | workload | start-up | memory at rest (usage; PSS sum; processes) | "
             "memory at hold (usage = anon + file + kernel; PSS sum; processes) | max processes | "
             "CPU used / throttled | NOOP median |")
    L.append("|---|---|---:|---|---|---:|---|---:|")
    for r in cells:
        if r.get("error"):
            continue
        d = r.get("delta", {})
        rest = r.get("at_rest", {})
        rest_s = f"{mib(rest.get('usage'))}; {kib_mib(rest.get('pss_kib'))}; {rest.get('procs')}"
        h = r.get("at_hold")
        hold_s = "–" if not h else (f"{mib(h.get('usage'))} = {mib(h.get('anon'))} + {mib(h.get('file'))} + "
                                    f"{mib(h.get('kernel'))}{sock_note(h, env)}; "
                                    f"{kib_mib(h.get('pss_kib'))}; {h.get('procs')}")
        cpu = "n/a" if d.get("cpu_s") is None else f"{d['cpu_s']:.2f} s"
        if d.get("nr_throttled") is not None:
            cpu += f" / {d['nr_throttled']} periods" + \
                (f", {d['throttled_s']:.1f} s" if d.get("throttled_s") is not None else "")
        if r["workload"] == "relay" and d.get("cpu_s") and r.get("delivered"):
            cpu += f" ({d['cpu_s'] * 1000 / r['delivered']:.1f} ms CPU per message)"
        p = r.get("probe", {})
        L.append(f"| {'tern' if r['mta'] == 'tern' else 'Postfix'} | {r['workload']} | {r['start_s']:.1f} s | "
                 f"{rest_s} | {hold_s} | {r.get('max_procs', '–')} | {cpu} | "
                 f"{ms(p.get('median_ms'))} ms |")

    src = " ".join(source_cmd(ctx, "PORT", a.messages))
    src = re.sub(r"^\S*/", "", src)
    sink = " ".join(Path(x).name if i == 0 else x for i, x in enumerate(ctx.bench.sink.cmd)) \
        if ctx.bench.sink else "smtp-sink"
    L.append("")
    L.append("How each figure is measured:")
    L.append("")
    L.append(f"- **The box.** Each cell (MTA × workload) gets a fresh cgroup and a fresh MTA instance with an "
             f"empty spool/queue. Group settings: {env['cgroup_settings']}. The MTA is started through "
             f"`/bin/sh -c 'echo $$ > GROUP/cgroup.procs (each hierarchy); exec COMMAND'`, so the MTA and "
             f"every process it forks (all of Postfix's daemons) start inside the group. smtp-source, "
             f"smtp-sink, this script and the NOOP probe run outside, unlimited. The group is removed after "
             f"the cell (and on Ctrl-C). Memory counts what the group's processes charge: anonymous memory, "
             f"kernel memory, and page cache they fault in first (spool files; shared libraries already cached "
             f"by someone else stay charged to that someone).")
    L.append(f"- **tern**: config as bench.py writes it (listen on a free 127.0.0.1 port, `relay_networks = "
             f"127.0.0.0/8`, `smarthost = 127.0.0.1:SINKPORT`, `smarthost_tls = none`, "
             f"`dns_servers = 127.0.0.1:1`, `log_level = warn`) with `max_connections = "
             f"max_connections_per_ip = {a.max_connections}`. "
             f"**Postfix**: bench.py's throwaway instance (`postfix -c DIR start`, Debian's master.cf with chroot "
             f"off, `smtpd` process limit 1100, `relayhost = [127.0.0.1]:SINKPORT`, no DNS, no TLS, "
             f"`smtpd_peername_lookup = no`) plus `smtpd_junk_command_limit = {JUNK_LIMIT}` so that the probe's "
             f"NOOPs are not penalised after 100" +
             (f", plus {', '.join('`' + x + '`' for x in a.postfix_conf)} (--postfix-conf)" if a.postfix_conf else "") +
             ". Otherwise Debian's defaults (`default_process_limit = 100`): no tuning for a small box. "
             "Postfix forks one `smtpd` per session, so 1,000 sessions "
             "inside 16 MiB are expected to hit the limit; the table shows what happened.")
    L.append(f"- **msg/s** (a): `{src}` with PORT = the MTA (one session per message, {bench.SMALL} B body, "
             f"one recipient), no warm-up; the sink is `{sink}` on a free port. msg/s = N / time from the start "
             f"of smtp-source until the sink counted N more messages. smtp-source stops at the first session "
             f"that fails on I/O; it is then started again for the messages it had not sent (at most "
             f"{a.max_restarts} restarts). ‡: the sink never counted N (cap {a.run_cap:.0f} s, or nothing "
             f"arrived for {a.drain_wait:.0f} s after smtp-source finished and the sink's last count): "
             f"delivered / time from the start until the run ended (not until the last delivery: a stall "
             f"is not rewarded).")
    L.append("- **sessions refused / failed** (a): refused = smtp-source `-A` warnings (a 4xx/5xx reply to "
             "greeting, HELO, MAIL, RCPT, DATA or end of data); failed = smtp-source `fatal:` exits (a lost "
             "or reset session, a timeout; each one also ends the other sessions of that smtp-source run). "
             "(b): refused = a 4xx/5xx greeting; failed = closed or reset before any greeting, connect() "
             f"failed, or no greeting within {a.idle_timeout:.0f} s.")
    L.append(f"- **idle sessions held** (b): {a.idle} TCP connections opened from Python, non-blocking, at most "
             f"64 without a greeting yet; a session counts when it has read the `220` line. After "
             f"{a.settle:g} s holding them, sessions still open (a non-blocking `recv(MSG_PEEK)` would block) "
             f"are counted as held; dropped later = got the banner, then closed by the server.")
    L.append(f"- **NOOP worst / p99**: a separate Python process (outside the group) holds one session "
             f"(banner, EHLO) for the whole cell and sends `NOOP` every {a.probe_interval * 1000:.0f} ms, "
             f"timing send → `250` reply (TCP_NODELAY, CLOCK_MONOTONIC); worst and 99th percentile over the "
             f"NOOPs sent during the workload (from its start until its end: the sink counted N / the idle "
             f"sessions were closed). A reply slower than {a.probe_timeout:.0f} s or a lost session counts "
             f"as \"session lost\" (the probe reconnects after 0.5 s); ≥: the worst is the time a NOOP (or a "
             f"reconnect) waited before its session broke. p99 and median are over answered NOOPs only; with "
             f"fewer than 100 NOOPs (a short relay run) p99 is the worst.")
    L.append("- **peak memory of the group**: " +
             ("`memory.peak`" if env["cgroup_v2"] else "`memory.max_usage_in_bytes`") +
             ", reset just before the workload (after start-up and the probe's session). Details table: "
             "usage (`memory.usage_in_bytes` / `memory.current`) split into anon + file (page cache) + kernel "
             "from `memory.stat` (v1: `rss`, `cache`, and `memory.kmem.usage_in_bytes`; v2: `anon`, `file`, "
             "`kernel`, with `sock` shown apart). Socket buffers: cgroup v1 charges them only to "
             "`memory.kmem.tcp.*` and only once a TCP limit is set, which this script does not do, so in v1 "
             "they are outside every figure, for both MTAs; v2 counts them in `memory.current`. PSS sum = `Pss` of "
             "`/proc/PID/smaps_rollup` summed over the group's processes (`cgroup.procs`).")
    L.append("- **OOM kills**: the `oom_kill` counter of " +
             ("`memory.events`" if env["cgroup_v2"] else "`memory.oom_control`") +
             " over the workload; in brackets the victims by name, from the kernel log (`dmesg` lines "
             "`oom-kill:...,oom_memcg=/GROUP,...,task=NAME`; the kernel may rate-limit them, so they can "
             "be fewer than the counter); processes gone = processes in the group after start-up that are no "
             "longer there after the workload (Postfix's smtpd processes also exit on their own when idle or "
             "after 100 sessions). `memory.failcnt` is not used: on Linux 6.18 with cgroup v1 it stayed 0 "
             "in a group that hit its limit and OOM-killed (checked by hand).")
    L.append("- **alive afterwards**: the main process (tern; Postfix's master) still runs in the group and a "
             "fresh session gets `220` and a `250` to NOOP within 30 s.")
    L.append("- **CPU used / throttled**: " +
             ("`usage_usec`, `nr_throttled`, `throttled_usec` of `cpu.stat`" if env["cgroup_v2"] else
              "`cpuacct.usage` of the group's cpuacct directory, `nr_throttled` and `throttled_time` of "
              "`cpu.stat`") + " over the workload.")
    L.append("- **tern/Postfix**: tern's msg/s over Postfix's (above 1: tern relays faster in the same box).")
    errs = [(f"{r['mta']} {r['workload']}", e) for r in cells for e in
            (r.get("probe", {}).get("errors", [])[:3] + r.get("fatal", [])[:3] + r.get("refused", [])[:3]
             + ([r["first_error"]] if r.get("first_error") else []))]
    if errs:
        L.append("")
        L.append("First errors seen (up to 3 of each kind per cell):")
        L.append("")
        for who, e in errs:
            L.append(f"- {who}: {e}")
    return "\n".join(L) + "\n"


# ---------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--messages", type=int, default=500, help="messages relayed per MTA (default 500)")
    ap.add_argument("--conc", type=int, default=20, help="smtp-source sessions at a time (default 20)")
    ap.add_argument("--idle", type=int, default=1000, help="idle sessions to open (default 1000)")
    ap.add_argument("--mem-mib", type=int, default=16, help="memory limit of the group, MiB (default 16)")
    ap.add_argument("--cpu-pct", type=float, default=10.0, help="CPU quota, %% of one core (default 10)")
    ap.add_argument("--max-connections", type=int, default=1100,
                    help="tern's max_connections and max_connections_per_ip (default 1100)")
    ap.add_argument("--probe-interval", type=float, default=0.05, help="seconds between NOOPs (default 0.05)")
    ap.add_argument("--probe-timeout", type=float, default=60.0,
                    help="a NOOP reply slower than this counts as a lost session (default 60)")
    ap.add_argument("--run-cap", type=float, default=300.0, help="seconds the relay may take (default 300)")
    ap.add_argument("--drain-wait", type=float, default=70.0,
                    help="give up on the relay when smtp-source is done and the sink counted nothing for "
                         "this long (default 70: longer than Postfix's 60 s service_throttle_time, so a "
                         "daemon restarted after a crash can still deliver)")
    ap.add_argument("--max-restarts", type=int, default=50, help="smtp-source restarts after a failed session")
    ap.add_argument("--idle-timeout", type=float, default=120.0,
                    help="seconds to get all idle sessions their banner (default 120)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds after start-up, and holding the idle sessions, before sampling (default 2)")
    ap.add_argument("--postfix-conf", action="append", default=[], metavar="'NAME = VALUE'",
                    help="extra main.cf line for Postfix (repeatable), e.g. to try a router-tuned "
                         "'default_process_limit = 5'")
    ap.add_argument("--only", choices=("tern", "postfix"), help="measure one MTA only")
    ap.add_argument("--tern", default=os.environ.get("TERN_BIN", str(bench.ROOT / "target" / "release" / "tern")),
                    help="tern binary (default: $TERN_BIN or target/release/tern)")
    ap.add_argument("--workdir", default=str(bench.ROOT / "target" / "bench-work"),
                    help="parent of the run dir (default target/bench-work)")
    ap.add_argument("--keep", action="store_true", help="keep the run dir (configs, spools, logs)")
    ap.add_argument("--probe", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return probe_main(args.probe, args.probe_interval, args.probe_timeout)
    if min(args.messages, args.conc, args.idle, args.mem_mib) < 1 or not 0 < args.cpu_pct <= 100:
        ap.error("counts must be positive, --cpu-pct in (0, 100]")
    if os.geteuid() != 0:
        sys.exit("router_class.py needs root (cgroups, a private Postfix instance)")

    ctx = Ctx(args)
    b = ctx.bench
    for name, path in (("smtp-source", b.smtp_source), ("smtp-sink", b.smtp_sink)):
        if not path:
            sys.exit(f"{name} not found: install the Debian package `postfix`")
    if not os.access(b.tern, os.X_OK):
        sys.exit(f"{b.tern} missing: run `cargo build --release` (or `make bench-router`)")
    kinds = [args.only] if args.only else ["tern", "postfix"]
    if "postfix" in kinds:
        why = bench.Postfix.unavailable(b)
        if why:
            sys.exit(f"Postfix unavailable: {why} (or use --only tern)")
    try:
        layout = Cgroup("layout-check", 1, 100)  # not created: finds the hierarchies
    except BenchError as e:
        sys.exit(str(e))
    bench.setup_process(args.idle + 512)

    parent = Path(args.workdir)
    parent.mkdir(parents=True, exist_ok=True)
    b.work = parent / f"router-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    b.work.mkdir()
    os.chmod(b.work, 0o755)
    env = {**bench.run_env(b.tern), "cgroup_v2": layout.v2}
    if "postfix" in kinds:
        env["postfix_version"] = subprocess.run([bench.tool("postconf"), "-d", "-h", "mail_version"],
                                                capture_output=True, text=True).stdout.strip()
    cells = []
    ok = False
    try:
        b.sink = bench.Sink(b)
        log(f"smtp-sink on 127.0.0.1:{b.sink.port}; work dir {b.work}")
        for workload in ("relay", "idle"):
            for kind in kinds:
                log(f"{kind} {workload} ...")
                cells.append(run_cell(ctx, kind, workload))
        ok = True
    except KeyboardInterrupt as e:
        env["interrupted"] = str(e) or "SIGINT"
        log(f"interrupted ({env['interrupted']}): stopping everything")
    except BenchError as e:
        env["interrupted"] = f"error: {e}"
        log(f"aborted: {e}")
    finally:
        bench.end_run(b, args.keep, [g.destroy for g in ctx.cgroups])
    settings = next((g.settings for g in ctx.cgroups if g.settings), [])
    env["cgroup_settings"] = ", ".join(f"`{v}` → `{f}`" for f, v in settings) or "n/a"
    env["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    cells = [c for c in cells if c]
    if cells:
        print(report(ctx, cells, env))
    return 0 if ok and not any(c.get("error") for c in cells) else 130 if not ok else 1


if __name__ == "__main__":
    sys.exit(main())
