#!/usr/bin/env python3
"""callgrind.py - instructions per message (`make bench-callgrind`; issue 16, workload 5).

Runs tern (and the floor, tests/bench/floor.rs) under
`valgrind --tool=callgrind --collect-atstart=yes` and counts the
instructions the process executes (Ir) for N messages and for none:

    instructions per message = (Ir(N) - Ir(0)) / N

Ir(0) is the same program started, left idle for as long as the N run
took, and stopped the same way, so start-up, shutdown and timer work
cancel out. Workloads (2 KB messages, one session per message, c=1, from
Postfix's smtp-source):

- tern relay: smtp-source -> tern -> smtp-sink (the smarthost); the run
  ends when the sink has counted N and tern's msg/ is empty again;
- tern accept only (`hold_outbound = yes`): the run ends when smtp-source
  exits (every message got its 250 after being made durable);
- floor accept only: the same against the floor.

callgrind counts user-space instructions only: the kernel's work (TCP,
the file system, fsync) is not in these figures.

Needs valgrind (`callgrind_annotate` comes with it), smtp-source/smtp-sink
(Debian `postfix`) and binaries with debug info for the per-function
tables: `make bench-callgrind` builds them with
`CARGO_PROFILE_RELEASE_DEBUG=1 CARGO_PROFILE_RELEASE_STRIP=none cargo build
--release --target-dir target/callgrind --bin tern --example floor` (the
release profile otherwise: opt-level "z", fat LTO, panic = abort).
Loopback only; every tern config sets `dns_servers = 127.0.0.1:1`.
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (tests/bench/bench.py)
import floor  # noqa: E402  (tests/bench/floor.py: the Floor process)
from bench import BenchError, log, wait_until  # noqa: E402

ROOT = bench.ROOT
SMALL = bench.SMALL
CG = ROOT / "target" / "callgrind" / "release"
HASH = re.compile(r"::h[0-9a-f]{16}\b")


def total_ir(path):
    """The Ir total of a callgrind output file."""
    text = Path(path).read_text(errors="replace")
    for key in ("totals:", "summary:"):
        m = re.search(rf"^{key}\s+(\d+)", text, re.M)
        if m:
            return int(m.group(1))
    raise BenchError(f"no totals in {path}")


ANNOTATE_LINE = re.compile(r"^\s*([\d,]+)\s+(?:\(\s*[\d.]+%\)\s+)?(\S.*)$")


def functions(b, out, inclusive):
    """{function: Ir} from callgrind_annotate (every function, no threshold)."""
    cmd = [b.annotate, f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100", "--auto=no", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise BenchError(f"callgrind_annotate rc={r.returncode}: {r.stderr.strip()[:300]}")
    funcs = {}
    for line in r.stdout.splitlines():
        m = ANNOTATE_LINE.match(line)
        if not m or "PROGRAM TOTALS" in m.group(2):
            continue
        name = HASH.sub("", m.group(2))
        name = re.sub(r"\s+\[[^\]]*\]$", "", name)  # the object file
        # "file:function": callgrind splits a function by the source file
        # of its (inlined) lines; merge them under the function's name.
        # Self costs add up; inclusive ones overlap, so take the largest.
        name = name.split(":", 1)[1] if ":" in name else name
        name = re.sub(r"'\d+$", "", name)  # callgrind's recursion level: f'2 is f
        ir = int(m.group(1).replace(",", ""))
        funcs[name] = max(funcs.get(name, 0), ir) if inclusive else funcs.get(name, 0) + ir
    return funcs


def under_callgrind(b, make, name, n, idle_s, run):
    """Start an MTA (make(b, name)) under callgrind; with n > 0 run the
    workload, else stay idle idle_s seconds; stop it with SIGTERM; return
    (callgrind output file, seconds between listening and SIGTERM)."""
    mta = make(b, name)
    out = b.work / f"callgrind.out.{name}"
    mta.prefix = [*b.callgrind, "--collect-atstart=yes", f"--callgrind-out-file={out}"]
    mta.start_timeout = 120
    with mta:
        t0 = time.monotonic()
        if n:
            run(mta)
        else:
            time.sleep(idle_s)
        mta.check_alive()
        busy = time.monotonic() - t0
    if not out.is_file():
        raise BenchError(f"{name}: callgrind wrote no {out.name}")
    return out, busy


def relay(b, t):
    a = b.args
    base = b.sink.count()
    bench.run_source(b, t, 1, a.messages, SMALL, "source.log", a.run_cap)
    if not wait_until(lambda: b.sink.count() >= base + a.messages, a.run_cap, 0.05):
        raise BenchError(f"sink got {b.sink.count() - base}/{a.messages}")
    msg = t.store / "spool" / "msg"
    if not wait_until(lambda: floor.count_files(msg) == 0, a.run_cap, 0.05):
        raise BenchError(f"{floor.count_files(msg)} messages left in {msg}")


def accept(b, m):
    bench.run_source(b, m, 1, b.args.messages, SMALL, "source.log", b.args.run_cap)
    got = floor.count_files(m.store / "spool" / "msg")
    if got < b.args.messages:
        raise BenchError(f"only {got}/{b.args.messages} files in the spool")


WORKLOADS = [
    ("tern_relay", "tern, relay (to smtp-sink)", lambda b, name: bench.Tern(b, name), relay),
    ("tern_accept", "tern, accept only (hold_outbound = yes)", lambda b, name: bench.Tern(b, name, hold=True), accept),
    ("floor_accept", "floor, accept only", lambda b, name: floor.Floor(b, name), accept),
]


def measure(b, key, make, run):
    a = b.args
    n = a.messages
    out_n, busy = under_callgrind(b, make, f"{key}-n{n}", n, 0, lambda m: run(b, m))
    out_0, _ = under_callgrind(b, make, f"{key}-n0", 0, busy, None)
    ir_n, ir_0 = total_ir(out_n), total_ir(out_0)
    res = {"n": n, "ir_n": ir_n, "ir_0": ir_0, "per_msg": (ir_n - ir_0) / n, "busy_s": round(busy, 1),
           "out_n": str(out_n), "out_0": str(out_0)}
    for kind, inclusive in (("self", False), ("inclusive", True)):
        fn, f0 = functions(b, out_n, inclusive), functions(b, out_0, inclusive)
        diff = {f: (v - f0.get(f, 0)) / n for f, v in fn.items()}
        if inclusive:
            # the call chain from _start down to the event loop is ~100 %
            # of everything: leave it out
            diff = {f: v for f, v in diff.items() if v < 0.985 * res["per_msg"]}
        res[kind] = sorted(diff.items(), key=lambda kv: -kv[1])[:a.top]
    return res


def report(b, env):
    a, R, E = b.args, b.results, b.errors
    L = [f"# Instructions per message (callgrind, user space only, {env['binary_arch']})", ""]
    L.append(f"- date: {env['date']}")
    L.append(f"- command: `{env['command']}`")
    L.append(f"- tern: {env['tern_version']} ({b.tern}); floor: {b.floor}; binaries for {env['binary_arch']}")
    L.append(f"- {env['valgrind']}; host: {env['host']}; load average at start {env['loadavg_start']}, "
             f"at end {env.get('loadavg_end', '?')}")
    if env.get("interrupted"):
        L.append(f"- **interrupted by {env['interrupted']}: partial results**")
    L.append(f"- N = {a.messages} messages of {SMALL} B, c=1, one session per message: "
             f"`{' '.join(bench.source_cmd('smtp-source', 'PORT', 1, a.messages, SMALL))}`")
    L.append("- instructions per message = (Ir(N) − Ir(0)) / N; Ir(0): the same program started, idle for as "
             "long as the N run took, stopped the same way (SIGTERM)")
    L.append("- **user space only**: callgrind does not see the kernel (TCP, page cache, file system, "
             "fsync), which is most of the time per message on this workload")
    L.append("")
    L.append("| workload | Ir(N) | Ir(0) | instructions per message | of the floor's |")
    L.append("|---|---:|---:|---:|---:|")
    fl = (R.get("floor_accept") or {}).get("per_msg")
    for key, label, *_ in WORKLOADS:
        r = R.get(key)
        if not r:
            L.append(f"| {label} | {'error' if key in E else 'not run'} | | | |")
            continue
        ratio = f"{r['per_msg'] / fl:.1f}×" if fl else "–"
        L.append(f"| {label} | {r['ir_n']:,} | {r['ir_0']:,} | **{r['per_msg']:,.0f}** | {ratio} |")
    for key, label, *_ in WORKLOADS:
        r = R.get(key)
        if not r:
            continue
        for kind in ("inclusive", "self"):
            if kind == "inclusive" and env["binary_arch"] == "aarch64":
                continue  # distorted by the machine outliner (note below)
            L.append("")
            L.append(f"### {label}: top {a.top} functions by {kind} instructions per message")
            L.append("")
            L.append("| Ir per message | % of the message | function |")
            L.append("|---:|---:|---|")
            for f, v in r[kind]:
                name = f.replace("|", "\\|")
                L.append(f"| {v:,.0f} | {v / r['per_msg']:.0%} | `{name}` |")
    L.append("")
    L.append("Per function: (Ir(N) − Ir(0)) of that function, from `callgrind_annotate --inclusive=yes|no "
             "--threshold=100`, / N; `???` = no symbol. Self costs of a function split over several "
             "source files (inlining) or recursion levels (`f'2`) are added up; inclusive ones overlap, so the largest part is shown. "
             "Inclusive costs nest and do not add up; functions at ≥ 98.5 % (the chain from `_start` "
             "down to the event loop) are left out.")
    if env["binary_arch"] == "aarch64":
        L.append("")
        L.append("aarch64: with opt-level \"z\" LLVM's machine outliner moves repeated instruction sequences "
                 "into `OUTLINED_FUNCTION_N`, reached by branch-and-link and left by a plain branch; callgrind "
                 "takes those for calls that do not return, so inclusive costs are distorted (everything "
                 "chains up to ~98 %) and not shown. The totals and the self tables are sound. The binaries are static musl: "
                 "`malloc`/`free` are musl's (mallocng), not glibc's.")
    if E:
        L.append("\n## Errors\n")
        for k, e in E.items():
            L.append(f"- {k}: {e}")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--messages", type=int, default=500, help="messages per run (default 500)")
    ap.add_argument("--top", type=int, default=15, help="functions per table (default 15)")
    ap.add_argument("--run-cap", type=float, default=600.0, help="seconds a run under valgrind may take (default 600)")
    ap.add_argument("--only", choices=[w[0] for w in WORKLOADS], action="append",
                    help="run only this workload (repeatable)")
    ap.add_argument("--tern", default=os.environ.get("TERN_BIN", str(CG / "tern")),
                    help="tern binary, with debug info (default: $TERN_BIN or target/callgrind/release/tern)")
    ap.add_argument("--floor", default=os.environ.get("FLOOR_BIN", str(CG / "examples" / "floor")),
                    help="floor binary (default: $FLOOR_BIN or target/callgrind/release/examples/floor)")
    ap.add_argument("--aarch64", metavar="VGROOT",
                    help="run aarch64 binaries (default target/callgrind/aarch64-unknown-linux-musl/release/) "
                         "under the aarch64 callgrind unpacked in VGROOT (Debian valgrind:arm64, dpkg -x), "
                         "itself run by qemu-aarch64-static (see tests/bench/README.md)")
    ap.add_argument("--qemu", default="qemu-aarch64-static", help="qemu-user for --aarch64 (default qemu-aarch64-static)")
    ap.add_argument("--workdir", default=str(ROOT / "target" / "bench-work"), help="parent of the run dir")
    ap.add_argument("--keep", action="store_true", help="keep the run dir (callgrind.out.* files included)")
    ap.add_argument("--json", metavar="FILE", help="also write all raw figures as JSON")
    args = ap.parse_args()
    if args.messages < 1 or args.top < 1:
        ap.error("counts must be positive")
    if args.aarch64:
        a64 = ROOT / "target" / "callgrind" / "aarch64-unknown-linux-musl" / "release"
        if "TERN_BIN" not in os.environ and args.tern == str(CG / "tern"):
            args.tern = str(a64 / "tern")
        if "FLOOR_BIN" not in os.environ and args.floor == str(CG / "examples" / "floor"):
            args.floor = str(a64 / "examples" / "floor")

    b = bench.Bench(args)
    b.floor = Path(args.floor)
    b.valgrind = shutil.which("valgrind")
    b.annotate = shutil.which("callgrind_annotate")
    if not b.annotate:
        sys.exit("callgrind_annotate not found: apt-get install valgrind")
    run_prefix = []  # how to run a binary of the target architecture
    if args.aarch64:
        # valgrind's launcher would exec the tool, an aarch64 binary, which
        # needs binfmt_misc; run the tool under qemu-user directly instead
        # (it only wants to know the launcher and its lib dir).
        vg = Path(args.aarch64).resolve()
        tool_bin = vg / "usr" / "libexec" / "valgrind" / "callgrind-arm64-linux"
        qemu = shutil.which(args.qemu)
        if not tool_bin.is_file() or not qemu:
            sys.exit(f"--aarch64: need {tool_bin} (dpkg -x valgrind_*_arm64.deb {vg}) and {args.qemu} "
                     "(apt-get install qemu-user-static)")
        os.environ["VALGRIND_LIB"] = str(tool_bin.parent)
        os.environ["VALGRIND_LAUNCHER"] = str(vg / "usr" / "bin" / "valgrind.bin")
        run_prefix = [qemu]
        b.callgrind = [qemu, str(tool_bin)]
        vg_version = f"aarch64 callgrind ({vg}) under {Path(qemu).name}"
    else:
        if not b.valgrind:
            sys.exit("valgrind not found: apt-get install valgrind")
        b.callgrind = [b.valgrind, "--tool=callgrind"]
        vg_version = None
    for what, path in (("smtp-source", b.smtp_source), ("smtp-sink", b.smtp_sink)):
        if not path:
            sys.exit(f"{what} not found: install the Debian package `postfix` (it need not be configured)")
    for path in (b.tern, b.floor):
        if not os.access(path, os.X_OK):
            sys.exit(f"{path} missing: run `make bench-callgrind` (builds with debug info into target/callgrind)")
    bench.setup_process(4096)
    b.work = bench.new_run_dir(args.workdir, "callgrind")
    version = subprocess.run([*run_prefix, str(b.tern), "--version"], capture_output=True, text=True, timeout=30)
    vg = subprocess.run([b.valgrind or "valgrind", "--version"], capture_output=True, text=True, timeout=10) \
        if vg_version is None else None
    # tern's version through run_prefix (qemu for an aarch64 binary)
    env = bench.run_env()
    env["host"] += f", {platform.machine()}"
    env.update({
        "tern_version": (version.stdout.strip().splitlines() or ["?"])[0],
        "valgrind": vg_version or vg.stdout.strip(),
        "binary_arch": "aarch64" if args.aarch64 else platform.machine(),
    })
    t0 = time.monotonic()
    ok = False
    try:
        b.sink = bench.Sink(b)
        for key, _label, make, run in WORKLOADS:
            if args.only and key not in args.only:
                continue
            b.measure(key, lambda make=make, run=run, key=key: measure(b, key, make, run))
        ok = True
    except KeyboardInterrupt as e:
        env["interrupted"] = str(e) or "SIGINT"
        log(f"interrupted ({env['interrupted']}): stopping everything")
    except BenchError as e:
        env["interrupted"] = f"error: {e}"
        log(f"aborted: {e}")
    finally:
        bench.end_run(b, args.keep)
    env["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    env["runtime_s"] = round(time.monotonic() - t0, 1)
    print(report(b, env))
    log(f"done in {env['runtime_s']}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "args": vars(args), "results": b.results, "errors": b.errors},
                      f, indent=1, default=str)
    return 130 if not ok else 1 if b.errors else 0


if __name__ == "__main__":
    sys.exit(main())
