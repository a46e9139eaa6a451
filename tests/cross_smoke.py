#!/usr/bin/env python3
"""Loopback smoke test of a cross-built tern under qemu-user:
usage: cross_smoke.py [QEMU] BINARY. Starts it on 127.0.0.1, sends one
message with smtplib and checks it lands in a Maildir."""
import smtplib
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "e2e"))
from harness import free_port, wait_for, wait_port  # noqa: E402

args = sys.argv[1:]
cmd = args[:-1] + [args[-1]] if len(args) > 1 and args[0] else [args[-1]]
with tempfile.TemporaryDirectory() as d:
    port = free_port()
    conf = Path(d) / "tern.conf"
    conf.write_text(
        f"hostname = cross.test\nlisten = 127.0.0.1:{port}\nspool_dir = {d}/spool\nmail_dir = {d}/mail\n"
        f"pid_file = {d}/pid\naliases = {d}/aliases\nlocal_recipients = any\ndns_servers = 127.0.0.1:1\n"
    )
    p = subprocess.Popen(cmd + ["-c", str(conf)])
    try:
        wait_port(port, timeout=30)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.sendmail("a@x.test", ["u@localhost"], b"Subject: cross\r\n\r\nqemu ok\r\n")
        new = Path(d) / "mail" / "u" / "new"
        wait_for(lambda: new.is_dir() and any(new.iterdir()), timeout=30, what="delivery")
        print("cross smoke test: 1 passed, 0 failed")
    finally:
        p.terminate()
        p.wait(10)
