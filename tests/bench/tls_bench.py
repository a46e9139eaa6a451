#!/usr/bin/env python3
"""tls_bench.py - TLS benchmarks of tern against Postfix (issue 16,
workloads 2 and 3; `make bench-tls`). See tests/bench/README.md.

Python 3 standard library only, run as root (for the Postfix reference).
Loopback only; every tern config sets `dns_servers = 127.0.0.1:1`.

 2. TLS submission: STARTTLS + AUTH PLAIN on the submission port, c=20,
    2 KB messages, (a) one session per message, (b) --per-session messages
    per session; both MTAs relay to a plain smtp-sink.
 3. TLS relay out: tern and Postfix accept plain SMTP from smtp-source and
    relay to a receiving Postfix that requires STARTTLS + AUTH, with and
    without outbound connection reuse; the receiver relays to smtp-sink,
    where messages are counted.

The STARTTLS/AUTH load generator is tests/bench/smtp_load.rs (cargo
example `smtp_load`; it does not verify certificates: bench only).
"""
import argparse
import os
import pwd
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench as B  # noqa: E402  (tests/bench/bench.py: processes, sink, tern, Postfix)

ROOT = B.ROOT
CERTS = ROOT / "tests" / "certs"
SASL_PKGS = ("sasl2-bin", "libsasl2-modules")
USER, PASSWORD = "bench", "bench-secret"
REALM = "bench.test"
SMALL = B.SMALL


def log(msg):
    B.log(msg)


def ensure_sasl():
    """None if Cyrus SASL (saslpasswd2, the PLAIN/LOGIN and sasldb plugins)
    is there, installing the Debian packages when root; else why not."""
    missing = [p for p in SASL_PKGS
               if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if not missing:
        return None
    if os.geteuid() != 0:
        return f"Debian packages {' '.join(missing)} missing (run as root, or apt-get install them)"
    log(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends"] + missing
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:  # a stale package list: update once and retry
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        return f"`{' '.join(cmd)}` failed: {r.stderr.strip()[-300:]}"
    return None


class Ctx:
    """What bench.Sink/Tern/Postfix expect of their `bench` argument."""

    def __init__(self, args):
        self.args = args
        # --pin: the MTA under test on CPU 0, the load generator on CPU 1
        # (workload 2), so a one-thread MTA is not starved by 20 client
        # threads under the scheduler's per-thread fairness.
        self.mta_launch = ["taskset", "-c", "0"] if args.pin else []
        self.load_launch = ["taskset", "-c", "1"] if args.pin else []
        self.procs = B.Procs()
        self.tern = Path(args.tern)
        self.loadgen = Path(args.loadgen)
        self.smtp_source = B.tool("smtp-source")
        self.smtp_sink = B.tool("smtp-sink")
        self.work = None
        self.sink = None
        self.results = {}
        self.errors = {}
        self.commands = {}

    # -- shared setup -------------------------------------------------------

    def setup_files(self):
        w = self.work
        for f in ("server.pem", "server.key", "ca.pem"):
            shutil.copy(CERTS / f, w / f)
        os.chmod(w / "server.key", 0o600)
        r = subprocess.run([str(self.tern), "passwd", USER], input=(PASSWORD + "\n").encode(),
                           capture_output=True, timeout=30)
        if r.returncode != 0:
            raise B.BenchError(f"tern passwd: {r.stderr.decode().strip()}")
        (w / "tern-users").write_bytes(r.stdout)
        (w / "smarthost.pw").write_text(PASSWORD + "\n")
        os.chmod(w / "smarthost.pw", 0o600)

    def setup_sasldb(self):
        """sasldb2 with USER@REALM and a private Cyrus config dir for smtpd."""
        w = self.work
        db, conf = w / "sasldb2", w / "sasl"
        conf.mkdir(exist_ok=True)
        os.chmod(conf, 0o755)
        saslpasswd2 = B.tool("saslpasswd2")
        if not saslpasswd2:
            raise B.BenchError("saslpasswd2 not found (Debian package sasl2-bin)")
        r = subprocess.run([saslpasswd2, "-p", "-c", "-f", str(db), "-u", REALM, USER],
                           input=PASSWORD.encode(), capture_output=True, timeout=30)
        if r.returncode != 0:
            raise B.BenchError(f"saslpasswd2: {r.stderr.decode().strip()}")
        os.chown(db, pwd.getpwnam("postfix").pw_uid, -1)
        os.chmod(db, 0o640)
        (conf / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {db}\nmech_list: PLAIN LOGIN\n")


# ---------------------------------------------------------------------------
# MTA configurations
# ---------------------------------------------------------------------------

def tern_submission(ctx, name):
    """tern with STARTTLS + AUTH on submission_listen, relaying to the sink."""
    w = ctx.work
    t = B.Tern(ctx, name, launch=ctx.mta_launch, extra={
        "submission_listen": f"127.0.0.1:{B.free_port()}",
        "tls_cert": w / "server.pem",
        "tls_key": w / "server.key",
        "users_file": w / "tern-users",
    })
    t.test_port = int(t.extra["submission_listen"].rsplit(":", 1)[1])
    return t


def pf_smtpd_tls(ctx, name):
    """main.cf settings for a Postfix smtpd with TLS and Cyrus SASL (sasldb).
    The SASL config dir is the instance's CONFDIR/sasl: Debian's Postfix
    3.7 read its smtpd.conf from there although cyrus_sasl_config_path
    named another directory (seen with strace)."""
    w = ctx.work
    sasl = w / name / "conf" / "sasl"
    sasl.mkdir(parents=True, exist_ok=True)
    shutil.copy(w / "sasl" / "smtpd.conf", sasl / "smtpd.conf")
    return {
        "smtpd_tls_cert_file": w / "server.pem",
        "smtpd_tls_key_file": w / "server.key",
        "smtpd_tls_security_level": "may",
        "smtpd_tls_loglevel": "1",
        "smtpd_sasl_type": "cyrus",
        "smtpd_sasl_path": "smtpd",
        "cyrus_sasl_config_path": sasl,
        "smtpd_sasl_local_domain": REALM,
        "smtpd_sasl_security_options": "noanonymous",
    }


def pf_tls_port_line(port, name):
    """A master.cf smtpd that requires STARTTLS and AUTH (relays only for
    authenticated clients)."""
    return (f"127.0.0.1:{port} inet n - n - 1100 smtpd -o syslog_name=postfix/{name}"
            " -o smtpd_tls_security_level=encrypt -o smtpd_sasl_auth_enable=yes -o smtpd_tls_auth_only=yes"
            " -o smtpd_client_restrictions=permit_sasl_authenticated,reject"
            " -o smtpd_relay_restrictions=permit_sasl_authenticated,reject")


def pf_submission(ctx, name):
    port = B.free_port()
    pf = B.Postfix(ctx, name, launch=ctx.mta_launch, main=pf_smtpd_tls(ctx, name),
                   master=[pf_tls_port_line(port, "submission")])
    pf.test_port = port
    return pf


def receiver(ctx, name):
    """The receiving Postfix of workload 3: STARTTLS + AUTH required on
    tls_port, plain SMTP from 127.0.0.0/8 on port (the baseline), relaying
    everything to the sink."""
    port = B.free_port()
    pf = B.Postfix(ctx, name, main=pf_smtpd_tls(ctx, name), master=[pf_tls_port_line(port, "tlsin")])
    pf.tls_port = port
    return pf


def tern_sender(ctx, name, rcv, reuse):
    w = ctx.work
    t = B.Tern(ctx, name, extra={
        "smarthost": f"localhost:{rcv.tls_port}",
        "smarthost_tls": "starttls",
        "tls_ca_file": w / "ca.pem",
        "smarthost_user": USER,
        "smarthost_password_file": w / "smarthost.pw",
        "outbound_connection_reuse": "yes" if reuse else "no",
    })
    t.test_port = t.port
    return t


def pf_sender(ctx, name, rcv, reuse):
    w = ctx.work
    yn = "yes" if reuse else "no"
    pf = B.Postfix(ctx, name, main={
        "relayhost": f"[localhost]:{rcv.tls_port}",
        "smtp_tls_security_level": "secure",
        "smtp_tls_secure_cert_match": "nexthop",
        "smtp_tls_CAfile": w / "ca.pem",
        "smtp_tls_loglevel": "1",
        "smtp_sasl_auth_enable": "yes",
        "smtp_sasl_password_maps": f"static:{USER}:{PASSWORD}",
        "smtp_sasl_security_options": "noanonymous",
        "smtp_sasl_tls_security_options": "noanonymous",
        "smtp_connection_cache_on_demand": yn,
        "smtp_tls_connection_reuse": yn,
    }, master=["tlsproxy unix - - n - 0 tlsproxy"])  # commented out in Debian's master.cf
    pf.test_port = pf.port
    return pf


# ---------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------

def loadgen_cmd(ctx, port, n, k, conc):
    return [*ctx.load_launch, str(ctx.loadgen), "-c", str(conc), "-n", str(n), "-k", str(k), "-s", str(SMALL),
            "--starttls", "--user", USER, "--pass", PASSWORD,
            "-f", B.SENDER, "-t", B.RCPT, "--helo", "client.test", f"127.0.0.1:{port}"]


def parse_loadgen(path):
    text = Path(path).read_text(errors="replace") if Path(path).is_file() else ""
    m = re.search(r"ok=(\d+) fail=(\d+) sessions=(\d+) session_errors=(\d+) elapsed=([\d.]+) "
                  r"last_ok=([\d.]+) cpu=([\d.]+|NaN) first_error=(\".*\")", text)
    if not m:
        return None
    return {"ok": int(m[1]), "fail": int(m[2]), "sessions": int(m[3]), "session_errors": int(m[4]),
            "elapsed_s": float(m[5]), "last_ok_s": float(m[6]), "cpu_s": float(m[7]),
            "first_error": m[8].strip('"')}


def wait_sink(ctx, target, timeout):
    return B.wait_until(lambda: ctx.sink.count() >= target, timeout, 0.01)


def submission_run(ctx, mta, k):
    """Workload 2 on a started MTA: warm-up, then N messages through
    smtp_load; rates to the last 250 after DATA and to the sink's count."""
    a, sink = ctx.args, ctx.sink
    base = sink.count()
    if a.warmup:
        out = mta.dir / "warmup.log"
        p = ctx.procs.spawn("smtp_load", loadgen_cmd(ctx, mta.test_port, a.warmup, max(1, min(k, a.warmup // a.conc)), a.conc), out)
        try:
            ctx.procs.wait(p, a.run_cap)
        except subprocess.TimeoutExpired:
            ctx.procs.stop(p, signal.SIGKILL)
            raise B.BenchError("warm-up smtp_load still running after the run cap")
        w = parse_loadgen(out)
        if not w or w["fail"]:
            raise B.BenchError(f"warm-up failed: {w['first_error'] if w else B.tail(out)}")
        if not wait_sink(ctx, base + a.warmup, a.run_cap):
            raise B.BenchError(f"warm-up: sink got {sink.count() - base}/{a.warmup}")
    os.sync()
    time.sleep(0.2)
    base = sink.count()
    out = mta.dir / "load.log"
    cmd = loadgen_cmd(ctx, mta.test_port, a.messages, k, a.conc)
    ctx.commands["W2"] = cmd
    t0 = time.monotonic()
    p = ctx.procs.spawn("smtp_load", cmd, out)
    t_sink = None
    deadline = t0 + a.run_cap
    while time.monotonic() < deadline:
        now = time.monotonic()
        if t_sink is None and sink.count() >= base + a.messages:
            t_sink = now
        if p.poll() is not None and t_sink is not None:
            break
        if p.poll() is not None and parse_loadgen(out) and parse_loadgen(out)["fail"]:
            # some messages were refused: the sink will never count N
            B.wait_until(lambda: False, 1.0)
            break
        time.sleep(0.005)
    if p.poll() is None:
        ctx.procs.stop(p, signal.SIGINT)
    else:
        ctx.procs.wait(p, 5)
    mta.check_alive()
    r = parse_loadgen(out)
    if r is None:
        raise B.BenchError("smtp_load printed no result: " + B.tail(out))
    got = sink.count() - base
    res = dict(r, n=a.messages, k=k, sink_received=got)
    res["failures"] = r["fail"] + (a.messages - r["ok"] - r["fail"])
    if r["ok"] and r["last_ok_s"] > 0:
        res["rate"] = r["ok"] / r["last_ok_s"]
    if t_sink is not None:
        res["sink_rate"] = a.messages / (t_sink - t0)
    else:
        res["sink_note"] = f"sink counted {got}/{a.messages} within {a.run_cap:.0f}s"
    if r["fail"]:
        res["error"] = f"{r['fail']} failed, first: {r['first_error']}"
    return res


def tls_counts(maillog, name):
    """(TLS sessions established, messages received with AUTH) by the
    Postfix smtpd whose syslog_name is postfix/NAME, from its maillog."""
    try:
        text = Path(maillog).read_text(errors="replace")
    except OSError:
        return None, None
    sessions = len(re.findall(rf"postfix/{name}/smtpd\[\d+\]: \S+ TLS connection established from", text))
    msgs = len(re.findall(rf"postfix/{name}/smtpd\[\d+\]: \w+: client=.*, sasl_method=", text))
    return sessions, msgs


def relay_run(ctx, sender, rcv):
    """Workload 3: smtp-source (plain) to the sender, which relays to the
    receiver (STARTTLS + AUTH), which relays to the sink. Rate = N / time
    until the sink counted N."""
    a, sink = ctx.args, ctx.sink
    base = sink.count()
    B.run_source(ctx, sender, a.conc, a.warmup, SMALL, "warmup.log", a.run_cap)
    if not wait_sink(ctx, base + a.warmup, a.run_cap):
        raise B.BenchError(f"warm-up: sink got {sink.count() - base}/{a.warmup}; receiver log: "
                           + B.tail(rcv.dir / "log" / "maillog", 600))
    os.sync()
    time.sleep(0.2)
    base = sink.count()
    cmd = B.source_cmd(ctx.smtp_source, sender.port, a.conc, a.messages, SMALL)
    ctx.commands["W3"] = cmd
    t0 = time.monotonic()
    p = ctx.procs.spawn("smtp-source", cmd, sender.dir / "source.log")
    done = wait_sink(ctx, base + a.messages, a.run_cap)
    t1 = time.monotonic()
    if p.poll() is None:
        try:
            ctx.procs.wait(p, 10)
        except subprocess.TimeoutExpired:
            ctx.procs.stop(p, signal.SIGKILL)
    sender.check_alive()
    got = sink.count() - base
    res = {"n": a.messages, "sink_received": got, "source_rc": p.returncode,
           "failures": a.messages - got}
    if done:
        res["rate"] = a.messages / (t1 - t0)
    else:
        res.update(capped=True, rate=got / (t1 - t0))
        res["error"] = f"sink counted {got}/{a.messages} within {a.run_cap:.0f}s"
    if rcv is not None:
        # over the receiver's whole life (warm-up included): idle sessions
        # opened during the warm-up may carry the whole timed run
        time.sleep(0.3)
        sessions, msgs = tls_counts(rcv.dir / "log" / "maillog", "tlsin")
        if sessions:
            res.update(tls_sessions=sessions, auth_msgs=msgs)
    return res


def plain_baseline_run(ctx, rcv):
    """The receiving Postfix alone: smtp-source c=conc on its plain port."""
    return relay_run(ctx, rcv, None)


# ---------------------------------------------------------------------------
# the plan
# ---------------------------------------------------------------------------

def measure(ctx, key, fn):
    """One run; a failure is recorded, not fatal."""
    t0 = time.monotonic()
    try:
        r = fn()
        ctx.results.setdefault(key, []).append(r)
        extra = f", sink {r['sink_rate']:.0f}/s" if r.get("sink_rate") else ""
        extra += (f", receiver: {r['auth_msgs']} msgs in {r['tls_sessions']} TLS sessions"
                  if "tls_sessions" in r else "")
        extra += f", {r['sessions']} sessions" if "sessions" in r else ""
        log(f"{key}: {r.get('rate', 0):.1f} msg/s{extra} ({time.monotonic() - t0:.1f}s)")
        if r.get("error"):
            ctx.errors.setdefault(key, []).append(r["error"])
    except (B.BenchError, OSError, subprocess.SubprocessError) as e:
        ctx.errors.setdefault(key, []).append(f"{type(e).__name__}: {e}")
        log(f"{key}: FAILED: {e}")
    ctx.procs.kill_descendants(f"after {key}")


def run_plan(ctx, pf_why):
    a = ctx.args
    ctx.sink = B.Sink(ctx)
    log(f"smtp-sink on 127.0.0.1:{ctx.sink.port}; work dir {ctx.work}")
    ctx.setup_files()
    if pf_why is None:
        ctx.setup_sasldb()

    def w2(kind, k):
        def fn():
            mk = tern_submission if kind == "tern" else pf_submission
            with mk(ctx, f"{kind}-sub-k{k}-r{rep}") as mta:
                return submission_run(ctx, mta, k)
        return fn

    def w3(kind, reuse):
        def fn():
            with receiver(ctx, f"rcv-{kind}-{'reuse' if reuse else 'noreuse'}-r{rep}") as rcv:
                if kind == "tern":
                    snd = tern_sender(ctx, f"tern-out-{'reuse' if reuse else 'noreuse'}-r{rep}", rcv, reuse)
                else:
                    snd = pf_sender(ctx, f"pf-out-{'reuse' if reuse else 'noreuse'}-r{rep}", rcv, reuse)
                with snd:
                    return relay_run(ctx, snd, rcv)
        return fn

    def baseline():
        with receiver(ctx, f"rcv-plain-r{rep}") as rcv:
            return plain_baseline_run(ctx, rcv)

    plan = []
    if "2" in a.workloads:
        plan += [("w2_tern_k1", w2("tern", 1)), ("w2_tern_kK", w2("tern", a.per_session))]
        if pf_why is None:
            plan += [("w2_pf_k1", w2("postfix", 1)), ("w2_pf_kK", w2("postfix", a.per_session))]
    if "3" in a.workloads and pf_why is None:  # the receiver is a Postfix
        plan += [("w3_tern_reuse", w3("tern", True)), ("w3_pf_reuse", w3("postfix", True)),
                 ("w3_tern_noreuse", w3("tern", False)), ("w3_pf_noreuse", w3("postfix", False)),
                 ("w3_rcv_plain", baseline)]
    # repetitions interleave workloads and MTAs to spread drift
    for rep in range(1, a.reps + 1):
        for key, fn in plan:
            measure(ctx, key, fn)


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def summary(runs, field="rate"):
    vals = sorted(r[field] for r in runs if r.get(field) is not None)
    if not vals:
        return None
    return statistics.median(vals), vals[0], vals[-1], len(vals)


def cell(ctx, key, field="rate"):
    runs = ctx.results.get(key, [])
    s = summary(runs, field)
    if s is None:
        return "error (see below)" if key in ctx.errors else "not run"
    med, lo, hi, n = s
    txt = f"{med:,.0f}" + ("†" if any(r.get("capped") for r in runs) else "")
    if n > 1:
        txt += f" ({lo:,.0f}–{hi:,.0f})"
    return txt


def ratio(ctx, k1, k2, field="rate"):
    s1, s2 = summary(ctx.results.get(k1, []), field), summary(ctx.results.get(k2, []), field)
    if not s1 or not s2:
        return "–"
    return f"{s1[0] / s2[0]:.2f}"


def failures(ctx, *keys):
    parts = []
    for k in keys:
        if not k:
            continue
        runs = ctx.results.get(k, [])
        f = sum(r.get("failures", 0) for r in runs)
        errs = len(ctx.errors.get(k, []))
        who = "tern" if "_tern_" in k else "Postfix"
        if runs or errs:
            parts.append(f"{who} {f}" + (f" (+{errs} run(s) failed)" if errs else ""))
    return ", ".join(parts) or "–"


def per_session(ctx, key, field):
    runs = ctx.results.get(key, [])
    vals = [r["auth_msgs"] / r[field] for r in runs if r.get(field)]
    return f"{statistics.median(vals):.1f}" if vals else "?"


def report(ctx, env, pf_why):
    a = ctx.args
    K = a.per_session
    rows = []
    if "2" in a.workloads:
        for k, label in ((1, "new session per message"), ("K", f"{K} messages per session (RSET between)")):
            t, p = f"w2_tern_k{k}", f"w2_pf_k{k}"
            rows.append((f"2. TLS submission, STARTTLS + AUTH PLAIN, c={a.conc}, 2 KB, {label}: "
                         "all 250s after DATA (msg/s)",
                         cell(ctx, t), cell(ctx, p), ratio(ctx, t, p), failures(ctx, t, p), "A"))
            rows.append(("… same runs, until the sink counted N (msg/s)",
                         cell(ctx, t, "sink_rate"), cell(ctx, p, "sink_rate"),
                         ratio(ctx, t, p, "sink_rate"), "", "A"))
    if "3" in a.workloads:
        if pf_why is None:
            rows.append((f"3. TLS relay out to a STARTTLS + AUTH smarthost, c={a.conc}, 2 KB, "
                         "with connection reuse (msg/s at the receiver)",
                         cell(ctx, "w3_tern_reuse"), cell(ctx, "w3_pf_reuse"),
                         ratio(ctx, "w3_tern_reuse", "w3_pf_reuse"),
                         failures(ctx, "w3_tern_reuse", "w3_pf_reuse"), "B"))
            rows.append(("3. same, without connection reuse (msg/s at the receiver)",
                         cell(ctx, "w3_tern_noreuse"), cell(ctx, "w3_pf_noreuse"),
                         ratio(ctx, "w3_tern_noreuse", "w3_pf_noreuse"),
                         failures(ctx, "w3_tern_noreuse", "w3_pf_noreuse"), "B"))
            rows.append(("… messages per TLS session seen by the receiver (reuse / no reuse)",
                         f"{per_session(ctx, 'w3_tern_reuse', 'tls_sessions')} / "
                         f"{per_session(ctx, 'w3_tern_noreuse', 'tls_sessions')}",
                         f"{per_session(ctx, 'w3_pf_reuse', 'tls_sessions')} / "
                         f"{per_session(ctx, 'w3_pf_noreuse', 'tls_sessions')}", "–", "", "B"))
            rows.append((f"3. receiving Postfix alone: plain SMTP from smtp-source, c={a.conc}, 2 KB "
                         "(its ceiling without TLS; msg/s at the sink)",
                         "–", cell(ctx, "w3_rcv_plain"), "–", failures(ctx, "w3_rcv_plain"), "C"))
        else:
            rows.append(("3. TLS relay out", "not run", "not run", "–", "",
                         f"needs the receiving Postfix: {pf_why}"))

    L = ["# tern TLS benchmark (issue 16, workloads 2 and 3)", ""]
    L.append(f"- date: {env['date']}")
    L.append(f"- command: `{env['command']}`")
    L.append(f"- tern: {env['tern_version']} ({ctx.tern}); load generator: {ctx.loadgen}")
    if env.get("interrupted"):
        L.append(f"- **interrupted ({env['interrupted']}): partial results**")
    L.append(f"- host: {env['host']}; load average at start {env['loadavg_start']}, "
             f"at end {env.get('loadavg_end', '?')}")
    if a.pin:
        L.append("- `--pin`: workload 2's MTA (tern; Postfix's master and so every smtpd) on CPU 0, "
                 "smtp_load on CPU 1 (`taskset -c`); the sink and workload 3 unpinned")
    L.append(f"- median of {a.reps} run(s), min–max in brackets, each on fresh MTA instances with empty "
             f"queues: N = {a.messages} messages after {a.warmup} warm-up, 1 recipient, {SMALL} B "
             f"messages; loopback only, `dns_servers = 127.0.0.1:1`")
    L.append("- reference: " + (f"Postfix {env.get('postfix_version', '?')} (throwaway instances, chroot off)"
                                  if pf_why is None else f"skipped: {pf_why}"))
    L.append("")
    L.append("| workload | tern | Postfix | tern/Postfix | failures (messages) | how |")
    L.append("|---|---:|---:|---:|---|---|")
    for r in rows:
        L.append("| " + " | ".join(r) + " |")
    shares = [r["cpu_s"] / r["elapsed_s"] for k, runs in ctx.results.items() if k.startswith("w2_")
              for r in runs if r.get("cpu_s") == r.get("cpu_s") and r.get("elapsed_s")]
    if shares:
        L.append(f"\nLoad generator's own CPU (user + system, all threads) / wall time of its timed runs: "
                 f"median {statistics.median(shares):.0%}, max {max(shares):.0%} of one core.")
    if any(r.get("capped") for runs in ctx.results.values() for r in runs):
        L.append(f"\n† a run hit the run cap ({a.run_cap:.0f}s): messages done / elapsed time.")
    L.append("\nHow each figure was measured:\n")
    sink = " ".join(Path(x).name if i == 0 else x for i, x in enumerate(ctx.sink.cmd)) if ctx.sink else "?"
    lg = " ".join(shlex.quote(x) for x in loadgen_cmd(ctx, 0, a.messages, 1, a.conc))
    lg = lg.replace(str(ctx.loadgen), "smtp_load").replace("127.0.0.1:0", "127.0.0.1:SUBPORT")
    L.append(f"- A (workload 2): `{lg}` and the same with `-k {K}` (after `--warmup` {a.warmup} "
             f"messages the same way). smtp_load (tests/bench/smtp_load.rs) runs {a.conc} threads; "
             "each session: connect, EHLO, STARTTLS, TLS handshake (full: no session resumption; the "
             "certificate is NOT verified, bench only), EHLO, AUTH PLAIN, then per message MAIL, RCPT, "
             "DATA, the message, and RSET before the next; QUIT. No pipelining. Every reply code is "
             "checked. First figure: messages that got their 250 after DATA / time from smtp_load's "
             "start to the last such 250. Second: N / time from spawning smtp_load until the sink counted "
             f"N. Both MTAs relay what they accept (plain SMTP) to one `{sink}`. "
             "tern: `submission_listen = 127.0.0.1:SUBPORT`, `tls_cert`/`tls_key` = tests/certs/server.pem"
             "/server.key (ECDSA P-256), `users_file` from `tern passwd bench` (PBKDF2-HMAC-SHA256, 4096 "
             "rounds), `smarthost = 127.0.0.1:SINKPORT`, `smarthost_tls = none`, `relay_networks = "
             "127.0.0.0/8`, `max_connections = max_connections_per_ip = 2000`, `log_level = warn`, "
             "`dns_servers = 127.0.0.1:1`. Postfix: bench.py's throwaway instance (queue fsync default, "
             "`relayhost = [127.0.0.1]:SINKPORT`) plus the same certificate, `smtpd_sasl_type = cyrus`, "
             "`cyrus_sasl_config_path = CONFDIR/sasl` whose smtpd.conf is `pwcheck_method: auxprop`, "
             "`auxprop_plugin: sasldb`, `sasldb_path: RUN/sasldb2`, `mech_list: PLAIN LOGIN` (sasldb2 "
             f"made by `saslpasswd2 -p -c -f RUN/sasldb2 -u {REALM} {USER}`, owned by postfix, 0640; "
             "it stores the password in clear), `smtpd_sasl_local_domain = bench.test`, "
             "`smtpd_tls_loglevel = 1`, and the master.cf service "
             f"`{pf_tls_port_line('SUBPORT', 'submission')}`.")
    src = " ".join(B.source_cmd("smtp-source", "PORT", a.conc, a.messages, SMALL))
    L.append(f"- B (workload 3): `{src}` (plain SMTP) to the MTA under test, after {a.warmup} warm-up "
             "messages; it relays to a receiving Postfix that requires STARTTLS and AUTH (the master.cf "
             "service of A, on a port of its own: `smtpd_tls_security_level=encrypt`, "
             "`smtpd_tls_auth_only=yes`, relaying only for `permit_sasl_authenticated`), which relays "
             f"to `{sink}`. Rate = N / time from smtp-source's start until the sink counted N. "
             "A fresh receiver per run. Messages per TLS session = messages the receiving service "
             "logged with `sasl_method=` / its \"TLS connection established from\" lines, over the "
             "receiver's life (warm-up and timed run). tern: `smarthost = "
             "localhost:TLSPORT`, `smarthost_tls = starttls` (verified: `tls_ca_file` = "
             f"tests/certs/ca.pem), `smarthost_user = {USER}`, `smarthost_password_file`, defaults "
             "otherwise (`max_outbound = 10`, `max_outbound_per_host = 4`; idle outbound sessions are "
             "kept 2 s for reuse, `outbound::machine::OUTBOUND_IDLE_KEEP`; without reuse "
             "`outbound_connection_reuse = no`). Postfix sender: `relayhost = [localhost]:TLSPORT`, `smtp_tls_security_level "
             "= secure`, `smtp_tls_secure_cert_match = nexthop`, `smtp_tls_CAfile` = the same CA, "
             f"`smtp_sasl_auth_enable = yes`, `smtp_sasl_password_maps = static:{USER}:PASSWORD`, "
             "`smtp_sasl_security_options = noanonymous`; with reuse `smtp_connection_cache_on_demand = "
             "yes` and `smtp_tls_connection_reuse = yes` (through tlsproxy), without both `no`; default "
             "concurrency (`default_destination_concurrency_limit = 20`).")
    L.append(f"- C: `{src}` straight to the receiving Postfix's plain port (permit_mynetworks), relayed "
             "to the sink: what the receiver can take without TLS and AUTH. If B is close to C or to "
             "Postfix's A figure (the same smtpd setup receiving STARTTLS + AUTH), the receiver is the "
             "bottleneck, not the sender.")
    if ctx.errors:
        L.append("\nErrors:\n")
        for k, errs in ctx.errors.items():
            for e in errs:
                L.append(f"- {k}: {e}")
    return "\n".join(L) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--messages", type=int, default=2000, help="messages per timed run (default 2000)")
    ap.add_argument("--warmup", type=int, default=100, help="warm-up messages before each timed run (default 100)")
    ap.add_argument("-c", "--conc", type=int, default=20, help="concurrent sessions (default 20)")
    ap.add_argument("-k", "--per-session", type=int, default=50,
                    help="messages per session for the session-reuse run of workload 2 (default 50)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions; the table shows the median (default 3)")
    ap.add_argument("--run-cap", type=float, default=120.0,
                    help="seconds a timed run may take (default 120)")
    ap.add_argument("--workloads", default="23", help="which workloads: 2, 3 or 23 (default 23)")
    ap.add_argument("--quick", action="store_true", help="N=300, warm-up 30, 1 repetition, cap 30s")
    ap.add_argument("--tern", default=os.environ.get("TERN_BIN", str(ROOT / "target" / "release" / "tern")),
                    help="tern binary (default: $TERN_BIN or target/release/tern)")
    ap.add_argument("--loadgen", default=str(ROOT / "target" / "release" / "examples" / "smtp_load"),
                    help="smtp_load binary (default target/release/examples/smtp_load; built if missing)")
    ap.add_argument("--workdir", default=str(ROOT / "target" / "bench-work"), help="parent of the run dir")
    ap.add_argument("--no-reference", action="store_true", help="skip Postfix (and so workload 3)")
    ap.add_argument("--pin", action="store_true",
                    help="workload 2: the MTA under test (tern, or Postfix's master and all its children) "
                         "on CPU 0 and the load generator on CPU 1 (taskset): one core for the MTA, as on a router")
    ap.add_argument("--keep", action="store_true", help="keep the run dir (configs, queues, logs)")
    args = ap.parse_args()
    if args.quick:
        args.messages, args.warmup, args.reps, args.run_cap = 300, 30, 1, min(args.run_cap, 30.0)
    if min(args.messages, args.conc, args.per_session, args.reps) < 1 or args.warmup < 0:
        ap.error("counts must be positive")
    # every one of the c threads must get sessions: k <= N / c
    k = max(1, min(args.per_session, args.messages // args.conc))
    if k != args.per_session:
        log(f"-k {args.per_session} > N/c: using {k} messages per session so that {args.conc} sessions run at once")
        args.per_session = k

    ctx = Ctx(args)
    for name, path in (("smtp-source", ctx.smtp_source), ("smtp-sink", ctx.smtp_sink)):
        if not path:
            sys.exit(f"{name} not found: install the Debian package `postfix`")
    if not os.access(ctx.tern, os.X_OK):
        sys.exit(f"{ctx.tern} missing: run `cargo build --release` (or `make bench-tls`)")
    if not os.access(ctx.loadgen, os.X_OK):
        log("building the load generator: cargo build --release --example smtp_load")
        r = subprocess.run(["cargo", "build", "--release", "--example", "smtp_load"], cwd=ROOT)
        if r.returncode != 0 or not os.access(ctx.loadgen, os.X_OK):
            sys.exit(f"{ctx.loadgen} missing and `cargo build --release --example smtp_load` failed")

    pf_why = "--no-reference given" if args.no_reference else B.Postfix.unavailable(ctx)
    if pf_why is None:
        pf_why = ensure_sasl()
    if pf_why:
        log(f"Postfix reference skipped: {pf_why}")
    B.setup_process(4096)
    ctx.work = B.new_run_dir(args.workdir, "tls-run")
    env = B.run_env(ctx.tern)
    if pf_why is None:
        env["postfix_version"] = subprocess.run([B.tool("postconf"), "-d", "-h", "mail_version"],
                                                capture_output=True, text=True).stdout.strip()
    t0 = time.monotonic()
    ok = False
    try:
        run_plan(ctx, pf_why)
        ok = True
    except KeyboardInterrupt as e:
        env["interrupted"] = str(e) or "SIGINT"
        log(f"interrupted ({env['interrupted']}): stopping everything")
    except B.BenchError as e:
        env["interrupted"] = f"error: {e}"
        log(f"aborted: {e}")
    finally:
        B.end_run(ctx, args.keep)
    env["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    print(report(ctx, env, pf_why))
    log(f"done in {time.monotonic() - t0:.1f}s")
    return 130 if not ok else 1 if ctx.errors else 0


if __name__ == "__main__":
    sys.exit(main())
