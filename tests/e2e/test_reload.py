"""SIGHUP applies what it says it applies (issue 13, item 5): the DNS
servers and the log level change at once; keys that only apply at restart
say so in one log line each."""

import os
import shutil
import signal
import smtplib
import subprocess
from pathlib import Path

from harness import TERN_BIN, FakeDns, Sink, wait_for, wait_port

CERTS = Path(__file__).resolve().parents[1] / "certs"


def reload(t):
    before = t.log_text().count("configuration reloaded")
    t.write_config()
    t.send(signal.SIGHUP)
    wait_for(lambda: t.log_text().count("configuration reloaded") > before, what="the reload")


def test_reload_applies_new_dns_servers(tern_factory):
    sink = Sink()
    dns = FakeDns({("far.test", "MX"): [(10, "mx.far.test")], ("mx.far.test", "A"): ["127.0.0.1"]})
    try:
        # First a closed port: every lookup fails and the mail is deferred.
        t = tern_factory(dns_servers="127.0.0.1:1", dns_timeout="1s", mx_port=sink.port,
                         retry_schedule="1s").start()
        with smtplib.SMTP("127.0.0.1", t.port) as c:
            c.sendmail("a@lan.test", ["u@far.test"], b"Subject: s\r\n\r\nbody\r\n")
        wait_for(lambda: "status=deferred" in t.log_text(), what="the deferral")
        t.settings["dns_servers"] = dns.addr
        reload(t)
        wait_for(lambda: sink.messages, timeout=20, what="delivery through the new DNS server")
        assert ("far.test", "MX") in dns.queries
    finally:
        sink.close()
        dns.close()


def test_reload_applies_log_level_and_names_restart_only_keys(tern_factory):
    t = tern_factory(log_level="info", tls_cert=CERTS / "ca.pem", tls_key=CERTS / "ca.key").start()
    with smtplib.SMTP("127.0.0.1", t.port) as c:
        c.noop()
    assert "DEBUG" not in t.log_text()
    t.settings["log_level"] = "debug"
    t.settings["smtps_listen"] = "127.0.0.1:1"
    reload(t)
    assert "smtps_listen changes only at restart" in t.log_text()
    with smtplib.SMTP("127.0.0.1", t.port) as c:
        c.noop()
    wait_for(lambda: "DEBUG" in t.log_text(), what="debug lines after the reload")


def test_smarthost_password_file_is_read_once_per_connection(tern_factory, tmp_path):
    """It was read again at every readiness event (12 opens for one 2 MB
    delivery): now once, when the connection is made."""
    assert shutil.which("strace"), "strace is not installed (apt-get install strace)"
    secret = tmp_path / "smarthost.secret"
    secret.write_text("app-password\n")
    sink = Sink(auth=("me", "app-password"))
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         smarthost_user="me", smarthost_password_file=secret)
        trace = tmp_path / "trace"
        logf = open(t.log, "ab")
        t.proc = subprocess.Popen(["strace", "-f", "-qq", "-e", "trace=openat", "-o", str(trace),
                                   TERN_BIN, "-c", str(t.conf)], stdout=logf, stderr=logf)
        logf.close()
        wait_port(t.port)
        body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 1000
        with smtplib.SMTP("127.0.0.1", t.port) as c:
            c.sendmail("a@lan.test", ["u@far.test"], body)
        wait_for(lambda: sink.messages, timeout=30, what="the relayed message")
        # Stop tern itself: a signal to strace would only detach it.
        os.kill(int((t.dir / "tern.pid").read_text().split()[0]), signal.SIGTERM)
        t.proc.wait(timeout=15)
        t.proc = None
        opens = [line for line in trace.read_text().splitlines() if str(secret) in line]
        assert len(opens) == 1, opens
    finally:
        sink.close()
