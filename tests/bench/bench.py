#!/usr/bin/env python3
"""bench.py - tern's own benchmark (`make bench`). See tests/bench/README.md.

Python 3 standard library only. Needs Postfix's `smtp-source` and `smtp-sink`
(Debian package `postfix`) and a release build of tern. Everything runs on
127.0.0.1; every tern config sets `dns_servers = 127.0.0.1:1`, so no DNS
query leaves the host.

Figures: relay throughput (2 KB at c=1 and c=20, 100 KB at c=20), accept-only
throughput (hold_outbound = yes), fsync-family syscalls per message, PSS/RSS
at rest and per idle session, bytes written to storage per accepted message,
binary size; and, when run as root with Postfix installed, the relay c=20 and
accept figures of a throwaway Postfix instance for tern/Postfix ratios.
"""
import argparse
import ctypes
import datetime
import errno
import grp
import json
import os
import platform
import pwd
import re
import resource
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FSYNC_FAMILY = ("fsync", "fdatasync", "sync_file_range", "syncfs")
SENDER = "bench@client.test"
RCPT = "rcpt@remote.test"  # not a local domain: tern relays it to the smarthost
SMALL = 2048
LARGE = 102400
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tool(name):
    """Path of a Postfix test tool: PATH first, then /usr/sbin."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    return found


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------
# processes: everything we start is tracked and stopped by PID
# ---------------------------------------------------------------------------

try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def _child_setup():
    # If the bench dies without cleaning up (SIGKILL), take the child with it.
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Procs:
    """Registry of started processes. stop_all() ends them, then SIGKILLs by
    PID any descendant left (daemonized Postfix processes are re-parented to
    us because we are a child subreaper)."""

    def __init__(self):
        self.live = {}  # pid -> (Popen, name)

    def spawn(self, name, cmd, out=None, **kw):
        f = open(out, "ab") if out else subprocess.DEVNULL
        try:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True, preexec_fn=_child_setup, **kw)
        finally:
            if out:
                f.close()
        self.live[p.pid] = (p, name)
        return p

    def wait(self, p, timeout):
        rc = p.wait(timeout=timeout)
        self.live.pop(p.pid, None)
        return rc

    def stop(self, p, sig=signal.SIGTERM, timeout=10.0):
        if p.poll() is None:
            try:
                p.send_signal(sig)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"pid {p.pid} ({self.live.get(p.pid, (None, '?'))[1]}) ignored signal {sig}, SIGKILL")
                p.kill()
                p.wait(timeout=5)
        self.live.pop(p.pid, None)
        self.reap_orphans()

    def reap_orphans(self):
        """Reap exited re-parented processes that no Popen owns."""
        for pid in children(os.getpid()):
            if pid in self.live:
                continue
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass

    def stop_all(self):
        for pid, (p, _name) in list(self.live.items())[::-1]:
            try:
                self.stop(p, timeout=5)
            except Exception as e:  # keep stopping the others
                log(f"stopping pid {pid}: {e}")
        self.kill_descendants("exit")

    def kill_descendants(self, why):
        # a few rounds: a daemon caught mid-fork may add a child after a scan
        for _ in range(5):
            left = [pid for pid in descendants(os.getpid()) if pid not in self.live and running(pid)]
            if not left:
                break
            log(f"{why}: SIGKILL leftover pids {left}")
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        self.reap_orphans()


def proc_stat(pid):
    """(state, ppid) of pid, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read().decode("latin-1")
    except OSError:
        return None
    fields = s[s.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def running(pid):
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st:
                kids.setdefault(st[1], []).append(int(d))
    return kids


def children(pid):
    return children_map().get(pid, [])


def descendants(pid):
    kids, out, todo = children_map(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


# ---------------------------------------------------------------------------
# /proc readers
# ---------------------------------------------------------------------------

def proc_kv(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.partition(":")
                parts = v.split()
                if parts and parts[0].isdigit():
                    out[k.strip()] = int(parts[0])
    except OSError:
        pass
    return out


def memory(pid):
    """PSS and RSS (KiB) from smaps_rollup, VmRSS/VmHWM (KiB) from status."""
    roll = proc_kv(f"/proc/{pid}/smaps_rollup")
    status = proc_kv(f"/proc/{pid}/status")
    return {"pss_kib": roll.get("Pss"), "rss_kib": roll.get("Rss"),
            "vmrss_kib": status.get("VmRSS"), "vmhwm_kib": status.get("VmHWM")}


def write_bytes(pid):
    return proc_kv(f"/proc/{pid}/io").get("write_bytes")


def device_write_bytes(path):
    """Bytes written so far to the block device holding path (sectors
    written in /sys/dev/block/MAJ:MIN/stat), or None (tmpfs, overlay, btrfs
    subvolumes: no such device)."""
    dev = os.stat(path).st_dev
    try:
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat") as f:
            return int(f.read().split()[6]) * 512
    except (OSError, IndexError, ValueError):
        return None


def device_flushes(path):
    """Cache-flush requests completed so far by the block device holding
    path (field 16 of /sys/dev/block/MAJ:MIN/stat, Linux >= 5.5), or None."""
    dev = os.stat(path).st_dev
    try:
        with open(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}/stat") as f:
            return int(f.read().split()[15])
    except (OSError, IndexError, ValueError):
        return None


def journal_commits(path):
    """ext4/jbd2 transactions committed so far on the file system holding
    path (/proc/fs/jbd2/DEV-INO/info), or None (no journal)."""
    dev = os.stat(path).st_dev
    try:
        name = os.path.basename(os.readlink(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"))
        for d in os.listdir("/proc/fs/jbd2"):
            if d.rsplit("-", 1)[0] == name:
                with open(f"/proc/fs/jbd2/{d}/info") as f:
                    return int(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        pass
    return None


def tracer_pid(pid):
    return proc_kv(f"/proc/{pid}/status").get("TracerPid", 0)


def is_listening(port):
    want = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    col = line.split()
                    if col[3] == "0A" and col[1].endswith(want):  # 0A = LISTEN
                        return True
        except (OSError, StopIteration):
            pass
    return False


def fs_type(path):
    """Filesystem type of path, from /proc/self/mountinfo (longest mount prefix)."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mnt = left.split()[4].replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = mnt, right.split()[0]
    except OSError:
        pass
    return kind


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, step=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def tail(path, n=400):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - n))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------
# load generator, sink, MTAs
# ---------------------------------------------------------------------------

class Sink:
    """smtp-sink as the smarthost; `-c` makes it print running counters
    (`... mesg=N` after every message), which count() reads from its log."""

    def __init__(self, bench):
        self.port = free_port()
        self.log = bench.work / "smtp-sink.log"
        self.cmd = [bench.smtp_sink, "-c", "-C", "-F"]
        if os.geteuid() == 0:
            self.cmd += ["-u", "nobody"]
        self.cmd += ["-m", "1100", f"127.0.0.1:{self.port}", "1024"]
        self.p = bench.procs.spawn("smtp-sink", self.cmd, self.log)
        if not wait_until(lambda: is_listening(self.port), 10):
            raise BenchError("smtp-sink did not start: " + tail(self.log))

    def count(self):
        try:
            with open(self.log, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 200))
                found = re.findall(rb"mesg=(\d+)", f.read())
        except OSError:
            return 0
        return int(found[-1]) if found else 0


def source_cmd(smtp_source, port, conc, n, size):
    return [smtp_source, "-c", "-s", str(conc), "-m", str(n), "-l", str(size),
            "-f", SENDER, "-t", RCPT, "-M", "client.test", f"127.0.0.1:{port}"]


class Tern:
    """launch: command prefix (router_class.py starts tern inside a cgroup);
    conf (or extra, tls_bench.py): settings that replace or add to the
    defaults below."""

    def __init__(self, bench, name, hold=False, store=None, launch=(), conf=None, extra=None):
        self.bench, self.name, self.hold = bench, name, hold
        self.launch, self.conf = list(launch), dict(conf or {})
        self.dir = bench.work / name
        # spool and mailboxes; config and log stay in dir
        self.store = store or self.dir
        self.port = free_port()
        self.p = None
        # run tern (or another binary: allocs.py) under this command (e.g.
        # valgrind; callgrind.py), and give it this long to listen
        self.binary = bench.tern
        self.prefix = []
        self.start_timeout = 15
        self.conf.update(extra or {})
        self.extra = self.conf  # the name tls_bench.py reads

    def start(self):
        d = self.dir
        for p in (d, self.store, self.store / "spool", self.store / "mail"):
            p.mkdir(exist_ok=True)
        (d / "aliases").write_text("")
        conf = {
            "hostname": "bench.test",
            "listen": f"127.0.0.1:{self.port}",
            "spool_dir": self.store / "spool",
            "mail_dir": self.store / "mail",
            "aliases": d / "aliases",
            "local_domains": "bench.test",
            "relay_networks": "127.0.0.0/8",
            "smarthost": f"127.0.0.1:{self.bench.sink.port}",
            "smarthost_tls": "none",
            "dns_servers": "127.0.0.1:1",
            "max_connections": 2000,
            "max_connections_per_ip": 2000,
            "log_level": "warn",
            "pid_file": d / "tern.pid",
        }
        if self.hold:
            conf["hold_outbound"] = "yes"
        conf.update(self.conf)
        (d / "tern.conf").write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))
        self.p = self.bench.procs.spawn("tern", [*self.launch, *self.prefix, str(self.binary), "-c",
                                                 str(d / "tern.conf")], d / "tern.log")
        if not wait_until(lambda: is_listening(self.port) or self.p.poll() is not None, self.start_timeout) \
                or self.p.poll() is not None:
            raise BenchError(f"tern did not start (rc={self.p.poll()}): " + tail(d / "tern.log"))
        return self

    @property
    def pid(self):
        return self.p.pid

    def check_alive(self):
        if self.p.poll() is not None:
            raise BenchError(f"tern exited (rc={self.p.returncode}): " + tail(self.dir / "tern.log"))

    def stop(self):
        if self.p is not None:
            self.bench.procs.stop(self.p, signal.SIGTERM, 15)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


class Postfix:
    """Throwaway Postfix instance (root only): private config and queue
    directories under the run dir, system binaries. Recipe from
    /work/shared/bench/adapters/postfix.sh (chroot off, smtpd on a loopback
    port, relayhost = the sink). launch: command prefix for `postfix start`
    (router_class.py starts Postfix inside a cgroup); main_cf: lines appended
    to main.cf."""

    def __init__(self, bench, name, hold=False, store=None, launch=(), main_cf="", main=None, master=None):
        self.bench, self.name, self.hold = bench, name, hold
        self.launch, self.main_cf = list(launch), main_cf
        self.dir = bench.work / name
        # the queue directory (whose paths, sockets included, must stay
        # short: sun_path); config, data and log stay in dir
        self.store = store or self.dir
        self.port = free_port()
        self.master = None
        # main.cf parameters replacing (or added to) the ones below, and
        # extra master.cf service lines (tls_bench.py)
        self.main_extra = dict(main or {})
        self.master_extra = list(master or [])

    @staticmethod
    def unavailable(bench):
        if os.geteuid() != 0:
            return "not root (a private Postfix instance needs root to start)"
        for b in ("postfix", "postconf"):
            if not tool(b):
                return f"`{b}` not installed (apt-get install postfix)"
        if not Path("/etc/postfix/master.cf").is_file():
            return "/etc/postfix/master.cf missing"
        try:
            pwd.getpwnam("postfix")
            grp.getgrnam("postdrop")
        except KeyError:
            return "user `postfix` or group `postdrop` missing"
        return None

    def start(self):
        d = self.dir
        conf, queue, data, logd = d / "conf", self.store / "queue", d / "data", d / "log"
        for p in (d, self.store, conf, queue, data, logd):
            p.mkdir(exist_ok=True)
            os.chmod(p, 0o755)
        os.chown(data, pwd.getpwnam("postfix").pw_uid, -1)
        hold = ""
        if self.hold:
            # accept + durably queue into the hold queue; no delivery. With no
            # qmgr intake cleanup would sleep in_flow_delay per message.
            hold = "smtpd_client_restrictions = check_client_access static:HOLD\nin_flow_delay = 0s\n"
        main_cf = f"""\
compatibility_level = 3.6
config_directory = {conf}
queue_directory = {queue}
data_directory = {data}
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions =
smtpd_peername_lookup = no
{hold}relayhost = [127.0.0.1]:{self.bench.sink.port}
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
maillog_file = {logd}/maillog
maillog_file_prefixes = {logd}
{self.main_cf}"""
        if self.main_extra:
            main, extra = [], dict(self.main_extra)
            for line in main_cf.splitlines():
                key = line.split("=", 1)[0].strip()
                main.append(f"{key} = {extra.pop(key)}" if key in extra else line)
            main_cf = "\n".join(main + [f"{k} = {v}" for k, v in extra.items()]) + "\n"
        (conf / "main.cf").write_text(main_cf)
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            f = line.split()
            if line.startswith("#") or line[:1] in (" ", "\t") or len(f) < 8:
                lines.append(line)
            elif f[0] == "smtp" and f[1] == "inet":
                lines.append(f"127.0.0.1:{self.port} inet n - n - 1100 smtpd")
            else:
                f[4] = "n"  # chroot off: the private queue has no jail
                lines.append(" ".join(f))
        lines += self.master_extra
        (conf / "master.cf").write_text("\n".join(lines) + "\n")
        out = d / "postfix-cmd.log"
        for action in ("check", "start"):
            cmd = [tool("postfix"), "-c", str(conf), action]
            p = self.bench.procs.spawn("postfix " + action, self.launch + cmd if action == "start" else cmd, out)
            rc = self.bench.procs.wait(p, 60)
            if rc != 0:
                raise BenchError(f"postfix {action} failed rc={rc}: " + tail(out))
        pidfile = queue / "pid" / "master.pid"
        if not wait_until(lambda: pidfile.is_file() and pidfile.read_text().strip().isdigit(), 10):
            raise BenchError("postfix master.pid not found: " + tail(out))
        self.master = int(pidfile.read_text().strip())
        if not wait_until(lambda: is_listening(self.port), 15):
            raise BenchError("postfix smtpd not listening: " + tail(logd / "maillog"))
        return self

    def check_alive(self):
        if not running(self.master):
            raise BenchError("postfix master exited: " + tail(self.dir / "log" / "maillog"))

    def stop(self):
        if self.master is None:
            return
        pids = [self.master] + descendants(self.master)
        try:
            os.kill(self.master, signal.SIGTERM)  # what `postfix stop` does
        except ProcessLookupError:
            pass
        wait_until(lambda: (self.bench.procs.reap_orphans() or True) and not any(running(p) for p in pids), 15, 0.05)
        for p in pids:
            if running(p):
                log(f"postfix pid {p} survived SIGTERM, SIGKILL")
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.bench.procs.reap_orphans()
        self.master = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


class LoopFs:
    """A fresh ext4 file system on a loop device, mounted under the run dir,
    for the flash figures: everything written to that device during a run
    is the MTA's own (data, metadata, journal), unlike the machine's shared
    disk. Inode tables and journal are initialised by mkfs, so no background
    ext4lazyinit writes land in the measurement. Root only."""

    SIZE = 1 << 30  # sparse image: only what is written takes space

    def __init__(self, bench, name):
        self.img = bench.work / f"{name}.img"
        self.mnt = bench.work / f"{name}.fs"
        self.mounted = False

    @staticmethod
    def unavailable():
        if os.geteuid() != 0:
            return "not root (a loop-mounted ext4 needs root)"
        for b in ("mkfs.ext4", "mount", "umount"):
            if not tool(b):
                return f"`{b}` not installed"
        return None

    def __enter__(self):
        with open(self.img, "wb") as f:
            f.truncate(self.SIZE)
        self.mnt.mkdir()
        for cmd in (["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(self.img)],
                    ["mount", "-o", "loop", str(self.img), str(self.mnt)]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                self.__exit__()
                raise BenchError(f"{' '.join(cmd)}: {r.stderr.strip()}")
        self.mounted = True
        os.chmod(self.mnt, 0o755)
        return self

    def __exit__(self, *exc):
        if self.mounted:
            subprocess.run(["umount", str(self.mnt)], capture_output=True, timeout=120)
            self.mounted = False
        for remove in (self.img.unlink, self.mnt.rmdir):
            try:
                remove()
            except OSError:
                pass
        return False


# ---------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------

def run_source(bench, mta, conc, n, size, logname, timeout):
    out = mta.dir / logname
    p = bench.procs.spawn("smtp-source", source_cmd(bench.smtp_source, mta.port, conc, n, size), out)
    try:
        rc = bench.procs.wait(p, timeout)
    except subprocess.TimeoutExpired:
        bench.procs.stop(p, signal.SIGKILL)
        raise BenchError(f"smtp-source ({logname}) still running after {timeout:.0f}s")
    if rc != 0:
        raise BenchError(f"smtp-source ({logname}) rc={rc}: " + tail(out, 300))


def cpu_ticks(pid):
    """(utime, stime) of pid (clock ticks, /proc/PID/stat), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            s = f.read().decode("latin-1")
        fields = s[s.rindex(")") + 2:].split()
        return int(fields[11]), int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def throughput(bench, mta, conc, size, hold, io_pid=None, cpu_pid=None):
    """Warm up, then time N messages. Relay: until the sink counted N more
    messages. Hold: until smtp-source exited (every message got its 250).
    With cpu_pid, also that process's CPU time per message over the run."""
    a = bench.args
    sink = bench.sink
    base = sink.count()
    run_source(bench, mta, conc, a.warmup, size, "warmup.log", a.run_cap)
    if not hold and not wait_until(lambda: sink.count() >= base + a.warmup, a.run_cap, 0.01):
        raise BenchError(f"warm-up: sink got {sink.count() - base}/{a.warmup}")
    os.sync()  # earlier dirty pages must not be flushed during the timed run
    time.sleep(0.2)
    base = sink.count()
    io0 = write_bytes(io_pid) if io_pid else None
    dev0 = device_write_bytes(mta.store)
    jc0 = journal_commits(mta.store)
    fl0 = device_flushes(mta.store)
    cpu0 = cpu_ticks(cpu_pid) if cpu_pid else None
    out = mta.dir / "source.log"
    t0 = time.monotonic()
    p = bench.procs.spawn("smtp-source", source_cmd(bench.smtp_source, mta.port, conc, a.messages, size), out)
    t_source = t_sink = None
    deadline = t0 + a.run_cap
    while time.monotonic() < deadline:
        now = time.monotonic()
        if t_source is None and p.poll() is not None:
            t_source = now
        if not hold and t_sink is None and sink.count() >= base + a.messages:
            t_sink = now
        if t_source is not None and (hold or t_sink is not None):
            break
        time.sleep(0.005)
    elapsed = time.monotonic() - t0
    cpu1 = cpu_ticks(cpu_pid) if cpu0 is not None else None
    if p.poll() is None:
        bench.procs.stop(p, signal.SIGKILL)
    rc = bench.procs.wait(p, 10)
    mta.check_alive()
    got = sink.count() - base
    res = {"n": a.messages, "conc": conc, "size": size, "hold": hold, "source_rc": rc}
    if t_source is not None:
        res["source_s"] = round(t_source - t0, 4)
    if rc not in (0, -signal.SIGKILL):
        raise BenchError(f"smtp-source rc={rc}: " + tail(out, 300))
    end = t_source if hold else t_sink
    if end is None:  # capped: report the steady-state rate so far
        done = got if not hold else acked(out)
        res.update(capped=True, elapsed_s=round(elapsed, 3), done=done, rate=done / elapsed)
        log(f"{mta.name}: run cap {a.run_cap:.0f}s reached with {done}/{a.messages} done")
    else:
        res.update(elapsed_s=round(end - t0, 4), rate=a.messages / (end - t0))
    if not hold:
        res["sink_received"] = got
    else:
        time.sleep(0.3)
        res["delivered_while_held"] = sink.count() - base
    msgs = max(1, res.get("done", a.messages))
    if cpu0 is not None and cpu1 is not None:
        us = 1e6 / os.sysconf("SC_CLK_TCK") / msgs
        res["cpu_user_us_per_msg"] = (cpu1[0] - cpu0[0]) * us
        res["cpu_sys_us_per_msg"] = (cpu1[1] - cpu0[1]) * us
        res["cpu_us_per_msg"] = res["cpu_user_us_per_msg"] + res["cpu_sys_us_per_msg"]
    if io_pid:
        io1 = write_bytes(io_pid)
        if io0 is not None and io1 is not None:
            res["write_bytes"] = io1 - io0
            res["write_bytes_per_msg"] = (io1 - io0) / msgs
    if dev0 is not None:
        os.sync()  # commit what the run left dirty (journal; in-place metadata may follow later)
        res["device_bytes"] = device_write_bytes(mta.store) - dev0
        res["device_bytes_per_msg"] = res["device_bytes"] / msgs
    if jc0 is not None:
        res["journal_commits_per_msg"] = (journal_commits(mta.store) - jc0) / msgs
    if fl0 is not None:
        res["device_flushes_per_msg"] = (device_flushes(mta.store) - fl0) / msgs
    return res


def acked(source_log):
    """smtp-source -c's last running counter (messages done)."""
    try:
        found = re.findall(rb"(\d+)\r", Path(source_log).read_bytes())
    except OSError:
        return 0
    return int(found[-1]) if found else 0


def fsync_audit(bench, conc):
    """strace -c the fsync family (plus rename, as proof the tracer saw the
    spool work) while tern relays M messages at concurrency conc."""
    a = bench.args
    m = a.fsync_messages
    with Tern(bench, f"tern-fsync-c{conc}") as t:
        base = bench.sink.count()
        run_source(bench, t, conc, 20, SMALL, "warmup.log", 60)
        wait_until(lambda: bench.sink.count() >= base + 20, 30)
        out = t.dir / "strace.txt"
        cmd = [bench.strace, "-f", "-c", "-qq", "-o", str(out),
               "-e", "trace=" + ",".join(FSYNC_FAMILY) + ",/^rename", "-p", str(t.pid)]
        st = bench.procs.spawn("strace", cmd, t.dir / "strace.log")
        try:
            if not wait_until(lambda: tracer_pid(t.pid) != 0 or st.poll() is not None, 10) or st.poll() is not None:
                raise BenchError("strace did not attach: " + tail(t.dir / "strace.log"))
            time.sleep(0.3)
            base = bench.sink.count()
            run_source(bench, t, conc, m, SMALL, "source.log", a.run_cap)
            delivered = wait_until(lambda: bench.sink.count() >= base + m, a.run_cap, 0.01)
            time.sleep(0.5)
        finally:
            bench.procs.stop(st, signal.SIGINT, 20)  # strace -c prints its summary on SIGINT
        calls = {}
        for line in out.read_text().splitlines() if out.is_file() else []:
            f = line.split()
            # % time, seconds, usecs/call, calls, [errors], syscall
            if len(f) >= 5 and f[3].isdigit() and re.match(r"^[a-z_0-9]+$", f[-1]) and f[-1] != "total":
                calls[f[-1]] = int(f[3])
        family = {k: v for k, v in calls.items() if k in FSYNC_FAMILY}
        renames = sum(v for k, v in calls.items() if k.startswith("rename"))
        if not delivered:
            raise BenchError(f"only {bench.sink.count() - base}/{m} relayed under strace")
        if not family and not renames:
            raise BenchError("strace saw no spool syscalls at all; was it attached?")
        return {"messages": m, "conc": conc, "calls": family, "renames": renames,
                "per_msg": sum(family.values()) / m, "command": " ".join(shlex.quote(x) for x in cmd)}


def open_idle(port, k, timeout=30.0, in_flight=64, stats=None):
    """Open k sessions and read each one's 220 banner, at most in_flight
    handshakes at a time (so the listen backlog never overflows). Returns the
    open sockets and an error string (the first one) or None.

    Without stats the first failure ends the opening. With stats (a dict)
    every session is tried and counted into it: banner (read the 220),
    refused (a 4xx/5xx greeting), closed (closed or reset before any
    greeting), connect_failed, no_banner (still waiting at the timeout),
    not_attempted (not opened before the timeout)."""
    sel = selectors.DefaultSelector()
    done, pending, err = [], {}, None
    keep_going = stats is not None
    counts = {"banner": 0, "refused": 0, "closed": 0, "connect_failed": 0, "no_banner": 0, "not_attempted": 0}
    to_open = k
    end = time.monotonic() + timeout
    banner = re.compile(rb"(?m)^220 [^\n]*\n")

    def failed(kind, text):
        nonlocal err
        counts[kind] += 1
        err = err or text

    try:
        while (to_open or pending) and time.monotonic() < end and (keep_going or err is None):
            while to_open and len(pending) < in_flight:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                rc = s.connect_ex(("127.0.0.1", port))
                if rc not in (0, errno.EINPROGRESS):
                    s.close()
                    failed("connect_failed", f"connect #{len(done) + len(pending) + 1}: {os.strerror(rc)}")
                    if not keep_going:
                        break
                    to_open -= 1
                    continue
                sel.register(s, selectors.EVENT_READ)
                pending[s] = b""
                to_open -= 1
            for key, _ in sel.select(timeout=0.2):
                s = key.fileobj
                reset = None
                try:
                    data = s.recv(1024)
                except BlockingIOError:
                    continue
                except OSError as e:
                    data, reset = b"", f"session #{len(done) + 1}: {e}"
                buf = pending.pop(s) + data
                if banner.search(buf):
                    sel.unregister(s)
                    done.append(s)
                    counts["banner"] += 1
                elif not data or re.match(rb"[45]\d\d ", buf):
                    sel.unregister(s)
                    s.close()
                    if re.match(rb"[45]\d\d", buf):
                        failed("refused", reset or f"session #{len(done) + 1} refused: {buf[:80]!r}")
                    else:
                        failed("closed", reset or f"session #{len(done) + 1} refused: {buf[:80]!r}")
                else:
                    pending[s] = buf
        counts["no_banner"] += len(pending)
        counts["not_attempted"] += to_open
        if err is None and (to_open or pending):
            err = f"only {len(done)}/{k} banners within {timeout:.0f}s"
    finally:
        for s in pending:
            s.close()
        sel.close()
    if stats is not None:
        stats.update(counts)
    return done, err


def still_open(socks):
    n = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK) != b"":
                n += 1  # unexpected data, but the session is open
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def idle_memory(bench):
    a = bench.args
    with Tern(bench, "tern-idle") as t:
        time.sleep(a.settle)
        rest = memory(t.pid)
        socks, err = open_idle(t.port, a.idle)
        try:
            time.sleep(a.settle)
            t.check_alive()
            busy = memory(t.pid)
            alive_n = still_open(socks)
        finally:
            for s in socks:
                s.close()
        k = len(socks)
        res = {"rest": rest, "idle": busy, "sessions": k, "still_open": alive_n}
        if k and rest["pss_kib"] is not None and busy["pss_kib"] is not None:
            res["pss_kib_per_session"] = (busy["pss_kib"] - rest["pss_kib"]) / k
        if k and rest["vmrss_kib"] is not None and busy["vmrss_kib"] is not None:
            res["vmrss_kib_per_session"] = (busy["vmrss_kib"] - rest["vmrss_kib"]) / k
        if err:
            res["error"] = err
        return res


# ---------------------------------------------------------------------------
# the bench
# ---------------------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.procs = Procs()
        self.tern = Path(args.tern)
        self.smtp_source = tool("smtp-source")
        self.smtp_sink = tool("smtp-sink")
        self.strace = tool("strace")
        self.work = None
        self.sink = None
        self.results = {}
        self.errors = {}

    def measure(self, key, fn, into=None):
        """Run one measurement; a failure is recorded, not fatal. With into,
        the result is appended to results[into]["runs"]."""
        t0 = time.monotonic()
        try:
            r = fn()
            if into:
                self.results.setdefault(into, {"runs": []})["runs"].append(r)
            else:
                self.results[key] = r
            short = r.get("rate") or r.get("per_msg") or r.get("pss_kib_per_session") or ""
            log(f"{key}: {short if not isinstance(short, float) else round(short, 2)} ({time.monotonic() - t0:.1f}s)")
            if isinstance(r, dict) and r.get("error"):
                self.errors[key] = r["error"]
        except (BenchError, OSError, subprocess.SubprocessError) as e:
            self.errors[key] = f"{type(e).__name__}: {e}"
            log(f"{key}: FAILED: {self.errors[key]}")
        self.procs.kill_descendants(f"after {key}")

    def run(self):
        a = self.args
        self.results["binary_bytes"] = self.tern.stat().st_size
        self.results["reference_skipped"] = "not reached"
        self.sink = Sink(self)
        log(f"smtp-sink on 127.0.0.1:{self.sink.port}; work dir {self.work}")
        why = "--no-reference given" if a.no_reference else Postfix.unavailable(self)
        if why:
            log(f"Postfix reference skipped: {why}")

        def tp(kind, name, conc, size, hold=False, loop=False):
            def fn():
                if loop:
                    with LoopFs(self, name) as fs:
                        return run(fs.mnt)
                return run(None)

            def run(store):
                if kind is Tern:
                    with Tern(self, name, hold, store) as t:
                        return throughput(self, t, conc, size, hold, io_pid=t.pid)
                with Postfix(self, name, hold, store) as pf:
                    return throughput(self, pf, conc, size, hold)
            return fn

        plan = [("relay_2k_c1", Tern, 1, SMALL, False),
                ("relay_2k_c20", Tern, 20, SMALL, False),
                ("relay_100k_c20", Tern, 20, LARGE, False),
                ("accept_2k_c20", Tern, 20, SMALL, True)]
        if why is None:
            plan += [("postfix_relay_2k_c1", Postfix, 1, SMALL, False),
                     ("postfix_relay_2k_c20", Postfix, 20, SMALL, False),
                     ("postfix_relay_100k_c20", Postfix, 20, LARGE, False),
                     ("postfix_accept_2k_c20", Postfix, 20, SMALL, True)]
        # repetitions interleave the workloads (and the MTAs) to spread drift
        for rep in range(a.reps):
            for key, kind, conc, size, hold in plan:
                name = f"{key.replace('_', '-')}-r{rep + 1}"
                self.measure(f"{key}#{rep + 1}", tp(kind, name, conc, size, hold, loop=a.loop_fs), into=key)
        for key, *_ in plan:
            self.summarize(key)
        # Flash: relay runs with the spool (Postfix: the queue) alone on a
        # fresh ext4; one run each, the byte counts hardly vary.
        self.results["flash_fs"] = LoopFs.unavailable() or "own"
        flash = [("flash_2k_c1", Tern, 1), ("flash_2k_c20", Tern, 20)]
        if why is None:
            flash += [("postfix_flash_2k_c1", Postfix, 1), ("postfix_flash_2k_c20", Postfix, 20)]
        for key, kind, conc in flash:
            loop = self.results["flash_fs"] == "own"
            self.measure(f"{key}#1", tp(kind, key.replace("_", "-"), conc, SMALL, loop=loop), into=key)
            self.summarize(key)
        if self.strace:
            self.measure("fsync_c1", lambda: fsync_audit(self, 1))
            self.measure("fsync_c20", lambda: fsync_audit(self, 20))
        self.measure("idle", lambda: idle_memory(self))
        self.results["reference_skipped"] = why
        if why is None:
            self.results["postfix_version"] = subprocess.run(
                [tool("postconf"), "-d", "-h", "mail_version"], capture_output=True, text=True).stdout.strip()

    def summarize(self, key):
        """Median over the repetitions of a throughput workload."""
        runs = self.results.get(key, {}).get("runs", [])
        if not runs:
            return
        rates = sorted(r["rate"] for r in runs)
        for field in ("write_bytes_per_msg", "device_bytes_per_msg", "journal_commits_per_msg",
                      "device_flushes_per_msg"):
            vals = [r[field] for r in runs if field in r]
            if vals:
                self.results[key][field] = statistics.median(vals)
        self.results[key].update(
            rate=statistics.median(rates), min=rates[0], max=rates[-1], reps=len(runs),
            capped=any(r.get("capped") for r in runs),
            delivered_while_held=max(r.get("delivered_while_held", 0) for r in runs))


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def n0(v):
    return "n/a" if v is None else f"{v:,.0f}"


def n1(v):
    return "n/a" if v is None else f"{v:,.1f}"


def n2(v):
    return "n/a" if v is None else f"{v:,.2f}"


def report(bench, env):
    a, R, E = bench.args, bench.results, bench.errors
    rows = []  # (figure, tern, postfix, ratio, command ref)
    cmds = {}

    def src(conc, size, n):
        return " ".join(source_cmd("smtp-source", "PORT", conc, n, size))

    for key in [k for k, v in R.items() if isinstance(v, dict) and "runs" in v and "rate" not in v]:
        bench.summarize(key)  # interrupted before the summary

    def rate_cell(key):
        r = R.get(key)
        if not r or "rate" not in r:
            return "error (see below)" if any(k.startswith(key + "#") for k in E) else "not run"
        cell = n0(r["rate"]) + ("†" if r.get("capped") else "")
        if r["reps"] > 1:
            cell += f" ({n0(r['min'])}–{n0(r['max'])})"
        return cell

    def ratio(k1, k2):
        r1, r2 = R.get(k1) or {}, R.get(k2) or {}
        if "rate" not in r1 or "rate" not in r2:
            return "–"
        return f"{r1['rate'] / r2['rate']:.2f}"

    pf_ran = R.get("reference_skipped") is None
    for key, pkey, label, conc, size, ref in (
            ("relay_2k_c1", "postfix_relay_2k_c1", "relay 2 KB, c=1 (msg/s)", 1, SMALL, "A"),
            ("relay_2k_c20", "postfix_relay_2k_c20", "relay 2 KB, c=20 (msg/s)", 20, SMALL, "A"),
            ("relay_100k_c20", "postfix_relay_100k_c20", "relay 100 KB, c=20 (msg/s)", 20, LARGE, "A"),
            ("accept_2k_c20", "postfix_accept_2k_c20", "accept only (held), 2 KB, c=20 (msg/s)", 20, SMALL, "B")):
        rows.append((label, rate_cell(key), rate_cell(pkey) if pkey and pf_ran else "–",
                     ratio(key, pkey) if pkey and pf_ran else "–", ref))
    if R.get("flash_fs") == "own" and not a.loop_fs:
        # The flash runs relay too, with the spool alone on a fresh ext4:
        # a second opinion on the disk (one run each, so noisier).
        for conc in (1, 20):
            key, pkey = f"flash_2k_c{conc}", f"postfix_flash_2k_c{conc}"
            rows.append((f"relay 2 KB, c={conc}, spool alone on a fresh ext4 (loop device), one run (msg/s)",
                         rate_cell(key), rate_cell(pkey) if pf_ran else "–",
                         ratio(key, pkey) if pf_ran else "–", "A"))
    cmds["A"] = (f"{src('C', 'SIZE', a.messages)} (after {a.warmup} warm-up messages); "
                 f"rate = N / time from smtp-source start until smtp-sink counted N more messages "
                 f"(sink: `{' '.join(Path(x).name if i == 0 else x for i, x in enumerate(bench.sink.cmd))}`)")
    cmds["B"] = (f"{src(20, SMALL, a.messages)} against tern with `hold_outbound = yes` "
                 f"(Postfix: `smtpd_client_restrictions = check_client_access static:HOLD`); "
                 f"rate = N / time until smtp-source exited (every message got its 250)")

    cmds["C"] = "strace -f -c of the fsync family on the tern PID while it relays messages (not run)"
    for key, conc in (("fsync_c1", 1), ("fsync_c20", 20)):
        label = f"fsync-family syscalls per relayed message, c={conc}"
        if not bench.strace:
            cell = "not measured: strace missing"
        elif key in E:
            cell = "error (see below)"
        elif key in R:
            r = R[key]
            detail = ", ".join(f"{k} {v}" for k, v in sorted(r["calls"].items())) or "none"
            cell = f"{n2(r['per_msg'])} ({detail}; rename* {r['renames']} / {r['messages']} msgs)"
            cmds["C"] = r["command"].replace(str(bench.strace), "strace") + \
                f" while relaying {r['messages']} messages (after 20 warm-up) at c=1 and c=20"
        else:
            cell = "not run"
        rows.append((label, cell, "–", "–", "C"))

    idle = R.get("idle")
    if idle:
        k = idle["sessions"]
        note = "" if k == a.idle else f" (only {k} of {a.idle} opened)"
        if idle.get("still_open", k) != k:
            note += f" ({k - idle['still_open']} dropped by tern)"
        rows.append(("PSS at rest (KiB)", n0(idle["rest"]["pss_kib"]), "–", "–", "D"))
        rows.append((f"PSS with {k} idle sessions (KiB){note}", n0(idle["idle"]["pss_kib"]), "–", "–", "D"))
        rows.append(("PSS per idle session (KiB)", n1(idle.get("pss_kib_per_session")), "–", "–", "D"))
        rows.append(("VmRSS at rest → with idle sessions (KiB)",
                     f"{n0(idle['rest']['vmrss_kib'])} → {n0(idle['idle']['vmrss_kib'])}", "–", "–", "D"))
    else:
        rows.append(("PSS / VmRSS at rest and idle", "error (see below)" if "idle" in E else "not run", "–", "–", "D"))
    cmds["D"] = (f"/proc/PID/smaps_rollup (Pss) and /proc/PID/status (VmRSS) of tern {a.settle:g}s after start, "
                 f"then {a.settle:g}s after opening {a.idle} sessions from Python that each read the 220 banner "
                 f"(≤ 64 handshakes in flight); per session = (PSS idle − PSS rest) / sessions")

    own_fs = R.get("flash_fs") == "own"

    def bytes_cell(key, field):
        r = R.get(key)
        if not r or "rate" not in r:
            return "error (see below)" if any(k.startswith(key + "#") for k in E) else "not run"
        if field not in r:
            return "not measured (no block device)" if field.startswith("device") else \
                "not measured (/proc/PID/io unreadable)"
        v = r[field]
        return f"{n0(v)} B ({v / SMALL:.1f}×)" if v else f"0: not accounted (fs {env['work_fs']})"

    def bytes_ratio(k1, k2, field):
        r1, r2 = R.get(k1) or {}, R.get(k2) or {}
        if r1.get(field) and r2.get(field):
            return f"{r1[field] / r2[field]:.2f}"
        return "–"

    for conc in (1, 20):
        key, pkey = f"flash_2k_c{conc}", f"postfix_flash_2k_c{conc}"
        rows.append((f"flash: bytes charged to the MTA (write_bytes) per relayed 2 KB message, c={conc}",
                     bytes_cell(key, "write_bytes_per_msg"), "–", "–", "E"))
        rows.append((f"flash: bytes written to the spool's device per relayed 2 KB message, c={conc}",
                     bytes_cell(key, "device_bytes_per_msg"),
                     bytes_cell(pkey, "device_bytes_per_msg") if pf_ran else "–",
                     bytes_ratio(key, pkey, "device_bytes_per_msg") if pf_ran else "–", "G"))
        if own_fs:
            def per_msg(k, field):
                v = (R.get(k) or {}).get(field)
                return "n/a" if v is None else n2(v)
            for field, what in (("journal_commits_per_msg", "ext4 journal commits"),
                                ("device_flushes_per_msg", "device cache flushes")):
                rows.append((f"flash: {what} per relayed 2 KB message, c={conc}", per_msg(key, field),
                             per_msg(pkey, field) if pf_ran else "–", "–", "H"))
    where = ("the spool (Postfix: queue_directory) alone on a fresh 1 GiB ext4 on a loop device "
             "(mkfs.ext4 defaults, 4 KiB blocks, inode tables initialised by mkfs)" if own_fs else
             f"the spool in {env['work_dir']} ({env['work_fs']}), a device shared with every other "
             f"writer on the machine ({R.get('flash_fs')})")
    cmds["E"] = (f"`write_bytes` delta of /proc/TERN_PID/io over a relay run of N messages (A, after "
                 f"warm-up) / N, with {where}. Counts the pages tern dirtied (and whatever its syncfs "
                 f"writes back for others); journal writes done by jbd2 are not included; "
                 f"(×) = multiple of the {SMALL} B message")
    cmds["H"] = ("transactions committed by jbd2 on the flash run's own file system "
                 "(/proc/fs/jbd2/DEV-8/info, first figure), and flush requests completed by its block device "
                 "(field 16 of /sys/dev/block/MAJ:MIN/stat), from the start of the run until `sync` after it, / N: "
                 "the syncs the device really saw, whatever the syscalls (a loop device without FUA turns one "
                 "journal commit into two flushes)")
    cmds["G"] = (f"sectors written × 512 on the spool's block device (/sys/dev/block/MAJ:MIN/stat) from "
                 f"the start of the same run until `sync` after it, / N, with {where}; includes data, "
                 f"metadata and journal")

    size = R.get("binary_bytes")
    rows.append(("binary size (bytes)", f"{size:,} ({size / 1024:,.0f} KiB)" if size else "n/a", "–", "–", "F"))
    cmds["F"] = f"size of {bench.tern}"

    L = ["# tern benchmark", ""]
    L.append(f"- date: {env['date']}")
    L.append(f"- command: `{env['command']}`")
    L.append(f"- tern: {env['tern_version']} ({bench.tern})")
    if env.get("interrupted"):
        L.append(f"- **interrupted by {env['interrupted']}: partial results**")
    L.append(f"- host: {env['host']}; load average at start {env['loadavg_start']}, at end {env.get('loadavg_end', '?')}")
    L.append(f"- throughput: median of {a.reps} run(s) (min–max in brackets), each on a fresh tern/Postfix "
             f"with an empty spool: N = {a.messages} messages after {a.warmup} warm-up, "
             f"1 recipient, bodies {SMALL} B / {LARGE} B; loopback only, `dns_servers = 127.0.0.1:1`")
    if a.loop_fs:
        L.append("- spool (Postfix: queue_directory) of every throughput run: alone on a fresh 1 GiB ext4 "
                 "on a loop device (`--loop-fs`), not the machine's disk")
    ref = R.get("reference_skipped")
    if ref is None:
        L.append(f"- reference: Postfix {R.get('postfix_version', '?')} (throwaway instance, "
                 "queue fsync default, chroot off, smtpd_peername_lookup = no)")
    else:
        L.append(f"- reference: skipped: {ref}")
    L.append("")
    L.append("| figure | tern | Postfix | tern/Postfix | how |")
    L.append("|---|---:|---:|---:|---|")
    for label, t, p, r, c in rows:
        L.append(f"| {label} | {t} | {p} | {r} | {c} |")
    if any(isinstance(v, dict) and v.get("capped") for v in R.values()):
        L.append(f"\n† run cap of {a.run_cap:.0f}s reached: messages done / elapsed time, not N / total time.")
    L.append("\nHow each figure was measured:\n")
    for c in sorted(cmds):
        L.append(f"- {c}: {cmds[c]}")
    held = [(k, v["delivered_while_held"]) for k, v in R.items()
            if isinstance(v, dict) and v.get("delivered_while_held")]
    if E or held:
        L.append("\nErrors and anomalies:\n")
        for k, e in E.items():
            L.append(f"- {k}: {e}")
        for k, d in held:
            L.append(f"- {k}: the sink received {d} messages although delivery was held")
    return "\n".join(L) + "\n"


def run_env(tern=None, work=None):
    """The facts every report starts with: when (UTC), the command line,
    the tern binary's version (with `tern`), the host, the run dir and its
    file system (with `work`) and the load average at the start."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(x) for x in [Path(sys.executable).name] + sys.argv),
    }
    if tern is not None:
        version = subprocess.run([str(tern), "--version"], capture_output=True, text=True, timeout=10)
        env["tern_version"] = (version.stdout.strip().splitlines() or ["?"])[0]
    env["host"] = f"{platform.node()}, {os.cpu_count()} CPUs, Linux {platform.release()}"
    if work is not None:
        env["work_dir"] = str(work)
        env["work_fs"] = fs_type(work)
    env["loadavg_start"] = " ".join(open("/proc/loadavg").read().split()[:3])
    return env


def new_run_dir(workdir, prefix):
    """A fresh directory for one run under workdir (created if needed),
    named PREFIX-DATE-PID, readable by Postfix's unprivileged daemons."""
    parent = Path(workdir)
    parent.mkdir(parents=True, exist_ok=True)
    d = parent / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    d.mkdir()
    os.chmod(d, 0o755)
    return d


def end_run(owner, keep, cleanup=()):
    """The end of a run, however it ended: signals ignored from here on,
    every process the run started stopped, then `cleanup` (callables, e.g.
    removing cgroups), then the run directory removed unless `keep`.
    `owner`: the object holding `procs` and `work` (a Bench)."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    owner.procs.stop_all()
    for f in cleanup:
        f()
    if not keep:
        shutil.rmtree(owner.work, ignore_errors=True)


def setup_process(want_fds):
    """Raise RLIMIT_NOFILE to want_fds (idle sessions need fds in us and in
    tern, which inherits the limit), become a child subreaper (daemonized
    Postfix processes are re-parented to us) and turn SIGINT, SIGTERM and
    SIGHUP into KeyboardInterrupt, so that cleanup runs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want_fds:
        new = want_fds if hard == resource.RLIM_INFINITY else min(want_fds, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want_fds:
            log(f"RLIMIT_NOFILE hard limit {hard}: idle sessions will be capped")
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # Explicit, also for SIGINT: a shell starting us in the background may
    # have left SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--messages", type=int, default=2000, help="messages per throughput run (default 2000)")
    ap.add_argument("--warmup", type=int, default=100, help="warm-up messages before each timed run (default 100)")
    ap.add_argument("--idle", type=int, default=1000, help="idle sessions for the memory figure (default 1000)")
    ap.add_argument("--fsync-messages", type=int, default=200, help="messages relayed under strace (default 200)")
    ap.add_argument("--reps", type=int, default=3,
                    help="repetitions of each throughput run; the table shows the median (default 3)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds to wait before a memory sample (default 1)")
    ap.add_argument("--run-cap", type=float, default=60.0,
                    help="seconds a timed run may take; a capped run reports its rate so far, marked † (default 60)")
    ap.add_argument("--quick", action="store_true", help="about one minute: N=300, idle=200, warm-up 30, cap 20s")
    ap.add_argument("--tern", default=os.environ.get("TERN_BIN", str(ROOT / "target" / "release" / "tern")),
                    help="tern binary (default: $TERN_BIN or target/release/tern)")
    ap.add_argument("--workdir", default=str(ROOT / "target" / "bench-work"),
                    help="parent of the run dir; put it on the disk you care about, not tmpfs "
                         "(default target/bench-work)")
    ap.add_argument("--loop-fs", action="store_true",
                    help="run every throughput workload with the spool (Postfix: the queue) alone on a fresh "
                         "1 GiB ext4 on a loop device, as the flash runs are (root)")
    ap.add_argument("--no-reference", action="store_true", help="skip the Postfix reference")
    ap.add_argument("--keep", action="store_true", help="keep the run dir (configs, spools, logs)")
    ap.add_argument("--json", metavar="FILE", help="also write all raw figures as JSON")
    args = ap.parse_args()
    if args.quick:
        args.messages, args.idle, args.warmup, args.run_cap = 300, 200, 30, min(args.run_cap, 20.0)
    if min(args.messages, args.idle, args.fsync_messages, args.reps) < 1 or args.warmup < 0:
        ap.error("counts must be positive")

    bench = Bench(args)
    for name, path in (("smtp-source", bench.smtp_source), ("smtp-sink", bench.smtp_sink)):
        if not path:
            sys.exit(f"{name} not found: install the Debian package `postfix` (it need not be configured)")
    if not os.access(bench.tern, os.X_OK):
        sys.exit(f"{bench.tern} missing: run `cargo build --release` (or `make bench`)")

    if args.loop_fs and (why := LoopFs.unavailable()):
        sys.exit(f"--loop-fs: {why}")
    setup_process(args.idle + 512)

    bench.work = new_run_dir(args.workdir, "run")
    env = run_env(bench.tern, bench.work)
    dev = os.stat(bench.work).st_dev
    env["work_dev"] = f"{os.major(dev)}:{os.minor(dev)}"
    t0 = time.monotonic()
    ok = False
    try:
        bench.run()
        ok = True
    except KeyboardInterrupt as e:
        env["interrupted"] = str(e) or "SIGINT"
        log(f"interrupted ({env['interrupted']}): stopping everything")
    except BenchError as e:  # only the sink can fail outside measure()
        env["interrupted"] = f"error: {e}"
        log(f"aborted: {e}")
    finally:
        end_run(bench, args.keep)
    if not ok and not (bench.sink and bench.results):
        return 130
    env["loadavg_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    env["runtime_s"] = round(time.monotonic() - t0, 1)
    text = report(bench, env)
    print(text)
    log(f"done in {env['runtime_s']}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "args": vars(args), "results": bench.results, "errors": bench.errors},
                      f, indent=1, default=str)
    return 130 if not ok else 1 if bench.errors else 0


if __name__ == "__main__":
    sys.exit(main())
