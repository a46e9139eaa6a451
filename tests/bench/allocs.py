#!/usr/bin/env python3
"""allocs.py - heap allocations per relayed message and memory at rest
(`make bench-allocs`). See tests/bench/README.md.

Python 3 standard library only, loopback only. Needs valgrind (DHAT),
Postfix's `smtp-source` and `smtp-sink`, a release build of tern (for the
memory-at-rest figures) and a build with symbols for DHAT: the `bench-dhat`
profile (release, plus line tables, not stripped):

    cargo build --release
    cargo build --profile bench-dhat      # -> target/bench-dhat/tern

Figures:
- heap allocations (and bytes allocated) per relayed message: tern runs
  under `valgrind --tool=dhat` twice, once relaying N messages (2 KB, c=1,
  smtp-source -> tern -> smtp-sink smarthost) and once with N = 0 (start,
  one SMTP connection that reads the banner and says QUIT, stop); per
  message = (total blocks(N) - total blocks(0)) / N.
- PSS at rest and VmRSS: the release binary (no valgrind), 3 s after start
  (after its first 1 s ticks), and again after relaying 100 messages.
- with --sites K: the K call sites that allocate most per relayed message
  (DHAT stacks of both runs, aggregated by the first frames in tern's own
  code, difference / N).
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (tern, smtp-sink and smtp-source handling)
from bench import BenchError, log  # noqa: E402

ROOT = bench.ROOT


def dhat_totals(path):
    """(total blocks, total bytes, the parsed JSON) of a DHAT output file."""
    with open(path) as f:
        d = json.load(f)
    blocks = sum(pp["tbk"] for pp in d["pps"])
    nbytes = sum(pp["tb"] for pp in d["pps"])
    return blocks, nbytes, d


def tern_sources():
    """Base names of tern's source files, to tell its frames from std's
    (a heuristic: inlined frames carry no crate name, and std's show a bare
    file name too; names std also uses count only with `tern::`)."""
    names = {p.name for p in (ROOT / "src").rglob("*.rs")}
    return names - {"lib.rs", "main.rs", "alloc.rs", "string.rs", "fmt.rs", "unix.rs", "rt.rs"}


# std functions whose frames show a bare `mod.rs`.
STD_FN = re.compile(r"^(<?(alloc|core|std|hashbrown|gimli)::|(write|push|extend|reserve|alloc|from_iter|collect|"
                    r"clone|to_vec|to_owned|to_string|format|new|with_capacity|UnknownInlinedFun|grow|"
                    r"finish_grow|try_allocate|append_elements|spec_extend|insert|entry)\w*\b)")


FRAME = re.compile(r"^(?:0x[0-9A-Fa-f]+: )?(?P<fn>.*?)(?: \((?P<file>[^():]+):(?P<line>\d+)\))?$")


def site_key(d, pp, depth, ours):
    """The first `depth` frames of a stack from tern's own code (a frame
    whose function names `tern::` or whose file is one of tern's), from
    the innermost; allocator and std frames before them are skipped."""
    keep = []
    for i in pp["fs"]:
        m = FRAME.match(d["ftbl"][i])
        fn, path = m.group("fn"), m.group("file") or ""
        ours_frame = "tern::" in fn.split("<", 1)[0] or (
            "/" not in path and path in ours and not (path == "mod.rs" and STD_FN.match(fn)))
        if ours_frame:
            fn = fn.replace("tern::", "")
            keep.append(f"{fn} ({path}:{m.group('line')})")
            if len(keep) >= depth:
                break
    return " <- ".join(keep) if keep else "(outside tern: " + d["ftbl"][pp["fs"][0]] + ")"


def by_site(d, depth):
    ours = tern_sources()
    out = defaultdict(lambda: [0, 0])
    for pp in d["pps"]:
        k = site_key(d, pp, depth, ours)
        out[k][0] += pp["tbk"]
        out[k][1] += pp["tb"]
    return out


def spool_empty(spool):
    """No message left in msg/, state/ or tmp/ (every delivery finished)."""
    for d in ("msg", "state", "tmp"):
        try:
            if any(True for _ in (spool / d).iterdir()):
                return False
        except FileNotFoundError:
            pass
    return True


def run_dhat(b, binary, n, size, outfile, timeout):
    """tern under DHAT: relay n messages (or, n = 0, one bare connection),
    stop with SIGTERM, return the DHAT output path."""
    t = bench.Tern(b, f"tern-dhat-{n}")
    t.binary = binary
    t.prefix = [b.valgrind, "--tool=dhat", f"--dhat-out-file={outfile}"]
    t.start_timeout = 120
    t.start()
    try:
        if n == 0:
            with socket.create_connection(("127.0.0.1", t.port), timeout=60) as s:
                f = s.makefile("rb")
                line = f.readline()
                if not line.startswith(b"220"):
                    raise BenchError(f"no banner: {line!r}")
                s.sendall(b"QUIT\r\n")
                while True:  # multi-line replies end with "NNN "
                    line = f.readline()
                    if not line or line[3:4] == b" ":
                        break
        else:
            base = b.sink.count()
            t0 = time.monotonic()
            bench.run_source(b, t, 1, n, size, "source.log", timeout)
            if not bench.wait_until(lambda: b.sink.count() >= base + n, timeout, 0.05):
                raise BenchError(f"sink got {b.sink.count() - base}/{n} messages")
            log(f"dhat N={n}: relayed in {time.monotonic() - t0:.1f}s")
        # Let the runner finish its bookkeeping (spool files removed) before
        # the stop, so the run is complete and both runs end the same way.
        spool = t.store / "spool"
        if not bench.wait_until(lambda: spool_empty(spool), 30, 0.1):
            log(f"dhat N={n}: spool not empty 30 s after the last delivery")
        time.sleep(1.0)
        t.check_alive()
    finally:
        t.stop()
    rc = t.p.returncode
    if rc not in (0, None):
        log(f"tern under dhat exited rc={rc}")
    if not os.path.isfile(outfile):
        raise BenchError(f"DHAT wrote no {outfile}: " + bench.tail(t.dir / "tern.log"))
    return outfile


def rest_memory(b, settle, relayed, size):
    """Memory of the release binary 1 s after start, and again at rest
    after relaying `relayed` messages (the code and buffers the relay
    path touched stay resident)."""
    t = bench.Tern(b, "tern-rest")
    t.start()
    try:
        time.sleep(settle)
        t.check_alive()
        fresh = bench.memory(t.pid)
        after = None
        if relayed:
            base = b.sink.count()
            bench.run_source(b, t, 1, relayed, size, "source.log", 120)
            if not bench.wait_until(lambda: b.sink.count() >= base + relayed, 60, 0.05):
                raise BenchError(f"rest run: sink got {b.sink.count() - base}/{relayed} messages")
            bench.wait_until(lambda: spool_empty(t.store / "spool"), 10, 0.05)
            time.sleep(settle)
            t.check_alive()
            after = bench.memory(t.pid)
        return fresh, after
    finally:
        t.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--messages", type=int, default=1000, help="messages relayed under DHAT (default 1000)")
    ap.add_argument("--size", type=int, default=bench.SMALL, help=f"message size (default {bench.SMALL})")
    ap.add_argument("--tern", default=os.environ.get("TERN_BIN", str(ROOT / "target" / "release" / "tern")),
                    help="release binary for the memory at rest (default: $TERN_BIN or target/release/tern)")
    ap.add_argument("--dhat-tern", default=str(ROOT / "target" / "bench-dhat" / "tern"),
                    help="binary run under DHAT (default target/bench-dhat/tern: "
                         "`cargo build --profile bench-dhat`)")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds after start (and after relaying) before a memory sample (default 3: "
                         "after the daemon's first 1 s ticks, which fault code back in)")
    ap.add_argument("--relayed", type=int, default=100,
                    help="messages relayed before the second memory sample (default 100; 0: none)")
    ap.add_argument("--sites", type=int, default=0, metavar="K",
                    help="also list the K call sites allocating most per message")
    ap.add_argument("--depth", type=int, default=3, help="frames per call site in --sites (default 3)")
    ap.add_argument("--run-cap", type=float, default=900.0, help="seconds the DHAT relay run may take")
    ap.add_argument("--no-dhat", action="store_true", help="only the memory at rest")
    ap.add_argument("--workdir", default=str(ROOT / "target" / "bench-work"), help="parent of the run dir")
    ap.add_argument("--keep", action="store_true", help="keep the run dir (configs, logs, DHAT files)")
    ap.add_argument("--json", metavar="FILE", help="also write the raw figures as JSON")
    a = ap.parse_args()
    if a.messages < 1:
        ap.error("-n must be positive")

    # bench.Bench wants bench.py's options; only a few are used here.
    bargs = argparse.Namespace(tern=a.tern)
    b = bench.Bench(bargs)
    b.valgrind = bench.tool("valgrind")
    for name, path in (("smtp-source", b.smtp_source), ("smtp-sink", b.smtp_sink)):
        if not path:
            sys.exit(f"{name} not found: install the Debian package `postfix` (it need not be configured)")
    if not os.access(b.tern, os.X_OK):
        sys.exit(f"{b.tern} missing: run `cargo build --release`")
    dhat_bin = Path(a.dhat_tern)
    if not a.no_dhat:
        if not b.valgrind:
            sys.exit("valgrind not found (apt-get install valgrind), or give --no-dhat")
        if not os.access(dhat_bin, os.X_OK):
            sys.exit(f"{dhat_bin} missing: run `cargo build --profile bench-dhat`")
    bench.setup_process(4096)
    b.work = bench.new_run_dir(a.workdir, "allocs")
    env = bench.run_env()
    R = {}
    rc = 0
    try:
        b.sink = bench.Sink(b)
        log(f"smtp-sink on 127.0.0.1:{b.sink.port}; work dir {b.work}")
        R["rest"], R["after"] = rest_memory(b, a.settle, a.relayed, a.size)
        log(f"at rest: PSS {R['rest']['pss_kib']} KiB, VmRSS {R['rest']['vmrss_kib']} KiB")
        if R["after"]:
            log(f"at rest after relaying {a.relayed}: PSS {R['after']['pss_kib']} KiB")
        if not a.no_dhat:
            runs = {}
            for n in (0, a.messages):
                log(f"dhat run N={n} ...")
                out = run_dhat(b, dhat_bin, n, a.size, str(b.work / f"dhat.{n}.json"), a.run_cap)
                runs[n] = dhat_totals(out)
                log(f"dhat N={n}: {runs[n][0]} blocks, {runs[n][1]} bytes")
            (b0, y0, d0), (bn, yn, dn) = runs[0], runs[a.messages]
            R["dhat"] = {"n": a.messages, "blocks0": b0, "bytes0": y0, "blocksN": bn, "bytesN": yn,
                         "blocks_per_msg": (bn - b0) / a.messages, "bytes_per_msg": (yn - y0) / a.messages}
            if a.sites:
                s0, sn = by_site(d0, a.depth), by_site(dn, a.depth)
                diff = [(k, (sn[k][0] - s0.get(k, (0, 0))[0]) / a.messages,
                         (sn[k][1] - s0.get(k, (0, 0))[1]) / a.messages) for k in sn]
                diff.sort(key=lambda x: -x[1])
                R["sites"] = diff[:a.sites]
    except KeyboardInterrupt as e:
        log(f"interrupted ({e or 'SIGINT'})")
        rc = 130
    except (BenchError, OSError, subprocess.SubprocessError) as e:
        log(f"FAILED: {type(e).__name__}: {e}")
        env["error"] = f"{type(e).__name__}: {e}"
        rc = 1
    finally:
        bench.end_run(b, a.keep)
    env["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])

    L = ["# tern: allocations per relayed message, memory at rest", ""]
    L.append(f"- date: {env['date']}")
    L.append(f"- command: `{env['command']}`")
    L.append(f"- host: {env['host']}; load average at start {env['loadavg_start']}, at end {env['loadavg_end']}")
    L.append(f"- binaries: {b.tern} ({b.tern.stat().st_size:,} bytes) for memory; "
             f"{dhat_bin} under DHAT" + (" (not run)" if a.no_dhat else ""))
    if "error" in env:
        L.append(f"- **error: {env['error']}**")
    L.append("")
    L.append("| figure | value | how |")
    L.append("|---|---:|---|")
    d = R.get("dhat")
    if d:
        L.append(f"| heap allocations per relayed {a.size} B message | {d['blocks_per_msg']:.1f} | A |")
        L.append(f"| heap bytes allocated per relayed message | {d['bytes_per_msg']:,.0f} | A |")
        L.append(f"| heap allocations, start + 1 connection + stop (N = 0) | {d['blocks0']:,} "
                 f"({d['bytes0']:,} bytes) | A |")
        L.append(f"| heap allocations, N = {d['n']} run | {d['blocksN']:,} ({d['bytesN']:,} bytes) | A |")
    elif not a.no_dhat:
        L.append("| heap allocations per relayed message | error (see above) | A |")
    r = R.get("rest")
    if r:
        pss = r["pss_kib"]
        L.append(f"| PSS at rest (KiB) | {pss:,} ({pss / 1024:.2f} MiB) | B |" if pss is not None
                 else "| PSS at rest | unreadable | B |")
        L.append(f"| VmRSS at rest (KiB) | {r['vmrss_kib']:,} | B |")
    r = R.get("after")
    if r:
        L.append(f"| PSS at rest after relaying {a.relayed} messages (KiB) | {r['pss_kib']:,} "
                 f"({r['pss_kib'] / 1024:.2f} MiB) | C |")
        L.append(f"| VmRSS at rest after relaying {a.relayed} messages (KiB) | {r['vmrss_kib']:,} | C |")
    L.append("")
    L.append("How measured:")
    L.append("")
    L.append(f"- A: `valgrind --tool=dhat --dhat-out-file=F {dhat_bin.name} -c CONF`, relaying N = {a.messages} "
             f"messages of {a.size} B, 1 recipient, one session each, c=1 "
             f"(`smtp-source -c -s 1 -m N -l {a.size} -f {bench.SENDER} -t {bench.RCPT} -M client.test`) "
             f"to an `smtp-sink` smarthost, then SIGTERM after the spool emptied; again with N = 0 "
             f"(start, one connection: banner, QUIT; stop). Per message = (total blocks(N) − total blocks(0)) / N, "
             f"bytes likewise (total bytes allocated, not live). Config: listen on a free 127.0.0.1 port, "
             f"`relay_networks = 127.0.0.0/8`, `smarthost = 127.0.0.1:SINKPORT`, `smarthost_tls = none`, "
             f"`dns_servers = 127.0.0.1:1`, `log_level = warn` (as bench.py).")
    L.append(f"- B: `Pss` of /proc/PID/smaps_rollup and `VmRSS` of /proc/PID/status of the release binary "
             f"(no valgrind), same config, {a.settle:g} s after it listened, no connection made.")
    if R.get("after"):
        L.append(f"- C: the same tern, {a.settle:g} s after it relayed {a.relayed} messages "
                 f"(as A, c=1, then the spool emptied): code and buffers the relay path touched.")
    if R.get("sites"):
        L.append("")
        L.append(f"Call sites allocating most per relayed message (first {a.depth} frames in "
                 "tern's code, innermost first; N run − N=0 run, / N):")
        L.append("")
        L.append("| allocs/msg | bytes/msg | site |")
        L.append("|---:|---:|---|")
        for k, nb, ny in R["sites"]:
            L.append(f"| {nb:.2f} | {ny:,.0f} | `{k}` |")
    print("\n".join(L))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"env": env, "args": vars(a), "results": R}, f, indent=1, default=str)
    return rc


if __name__ == "__main__":
    sys.exit(main())
