"""`tern mail` / `mail` / `mailx`: mailx-style submission for scripts
(smartd, mdadm, apcupsd, cron), read back from the delivered Maildir files
with Python's email parser."""

import email
import email.policy
import os
import subprocess

from harness import TERN_BIN, wait_for

SUBJECT = "Ünïcode subject: SMART error (ATA) on /dev/sda — 温度 überschritten, please look 🙂"
BODY = "Device: /dev/sda, 1 Currently unreadable (pending) sectors\nGrüße,\nsmartd\n"


def mail(t, args, body, argv0=None, env=None):
    """Runs `tern -c CONF mail ARGS`, or a symlink named argv0 (which reads
    its configuration from TERN_CONFIG: `-c` is Cc there)."""
    e = dict(os.environ)
    e.update(env or {})
    if argv0:
        bindir = t.dir / "bin"  # not t.dir: its "mail" is the mail_dir
        bindir.mkdir(exist_ok=True)
        link = bindir / argv0
        if not link.exists():
            link.symlink_to(TERN_BIN)
        e["TERN_CONFIG"] = str(t.conf)
        cmd = [str(link), *args]
    else:
        cmd = [TERN_BIN, "-c", str(t.conf), "mail", *args]
    return subprocess.run(cmd, input=body, capture_output=True, timeout=30, cwd=t.dir, env=e)


def parse(raw):
    return email.message_from_bytes(raw, policy=email.policy.default)


def delivered(t, user, n=1):
    return wait_for(lambda: (lambda m: m if len(m) >= n else None)(t.maildir(user)),
                    timeout=10, what=f"delivery to {user}")


def attachment_files(t):
    pdf = bytes(range(256)) * 40 + b"%%EOF\r\n\x00\xff"
    (t.dir / "report.pdf").write_bytes(pdf)
    notes = "temperature 61°C\nno CRLF here\r\nend".encode()
    (t.dir / "notes.txt").write_bytes(notes)
    return pdf, notes


def check_full_message(raw, pdf, notes, frm):
    m = parse(raw)
    assert not m.defects, m.defects
    assert m["Subject"] == SUBJECT
    assert m["To"] == "user@localhost" and m["Cc"] == "cc@localhost"
    assert m["From"] == frm
    assert "Bcc" not in m and b"bcc@localhost" not in raw.split(b"\n\n", 1)[0].split(b"Received:", 1)[-1]
    assert m["Message-ID"] and m["Date"] and m["MIME-Version"] == "1.0"
    assert m.get_content_type() == "multipart/mixed"
    # Every header line, folded, fits 78 octets.
    head = raw.split(b"\n\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\n") if not line.startswith(b"Received:")), head
    parts = list(m.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "application/pdf", "text/plain"]
    assert parts[0].get_content() == BODY
    assert parts[0].get_content_charset() == "utf-8"
    atts = list(m.iter_attachments())
    assert [a.get_filename() for a in atts] == ["report.pdf", "notes.txt"]
    assert atts[0].get_payload(decode=True) == pdf
    assert atts[1].get_payload(decode=True) == notes
    assert atts[1].get_content_charset() == "utf-8"
    assert all(a["Content-Transfer-Encoding"] == "base64" for a in atts)


def test_mail_with_attachments_cc_and_bcc(tern):
    pdf, notes = attachment_files(tern)
    r = mail(tern, ["-s", SUBJECT, "-a", "report.pdf", "-a", str(tern.dir / "notes.txt"),
                    "-c", "cc@localhost", "-b", "bcc@localhost", "user@localhost"], BODY.encode())
    assert r.returncode == 0, r.stderr
    assert r.stderr == b""
    for user in ("user", "cc", "bcc"):
        raw = delivered(tern, user)[0]
        assert f"Delivered-To: {user}@localhost".encode() in raw
        check_full_message(raw, pdf, notes, frm=parse(raw)["From"])
    # The sender is the invoking user at the host name, like sendmail's.
    m = parse(delivered(tern, "user")[0])
    assert str(m["From"]).endswith("@mx.test")
    assert delivered(tern, "user")[0].startswith(b"Return-Path: <" + str(m["From"]).encode() + b">\n")


def test_mail_and_mailx_symlinks_with_from_and_mixed_order(tern):
    pdf, notes = attachment_files(tern)
    # Options after the recipient (GNU getopt order), an attached value,
    # -c meaning Cc under this name.
    r = mail(tern, ["user@localhost", "-s", SUBJECT, "-areport.pdf", "-a", "notes.txt",
                    "-r", "Smart Daemon <smartd@mx.test>", "-c", "cc@localhost", "-b", "bcc@localhost"],
             BODY.encode(), argv0="mail")
    assert r.returncode == 0, r.stderr
    raw = delivered(tern, "user")[0]
    check_full_message(raw, pdf, notes, frm="Smart Daemon <smartd@mx.test>")
    assert raw.startswith(b"Return-Path: <smartd@mx.test>\n")
    assert parse(delivered(tern, "bcc")[0])["Subject"] == SUBJECT
    # mailx, no attachments: a single text/plain part; unqualified
    # recipients get the host name, like sendmail's.
    r = mail(tern, ["-S", "sendwait", "-s", "apcupsd: power failure", "root"], b"UPS on battery\r\n",
             argv0="mailx")
    assert r.returncode == 0, r.stderr
    m = parse(delivered(tern, "root")[0])
    assert m["Subject"] == "apcupsd: power failure" and m["To"] == "root@mx.test"
    assert m.get_content_type() == "text/plain" and m["Content-Transfer-Encoding"] == "7bit"
    assert m.get_content() == "UPS on battery\n"


def test_mail_with_the_daemon_down_is_imported_at_start(tern_factory):
    t = tern_factory()
    pdf, notes = attachment_files(t)
    r = mail(t, ["-s", SUBJECT, "-a", "report.pdf", "-a", "notes.txt", "-c", "cc@localhost",
                 "-b", "bcc@localhost", "-r", "Smart Daemon <smartd@mx.test>", "user@localhost"],
             BODY.encode())
    assert r.returncode == 0, r.stderr
    assert len(list((t.spool / "drop").iterdir())) == 1
    t.start()
    check_full_message(delivered(t, "user")[0], pdf, notes, frm="Smart Daemon <smartd@mx.test>")
    assert delivered(t, "bcc") and delivered(t, "cc")


def test_long_lines_and_empty_bodies(tern):
    # A 5000-octet line (a script dumping a log) goes quoted-printable
    # and decodes back; nothing delivered has a line over 998 octets.
    body = ("x" * 5000 + "\nä\n").encode()
    r = mail(tern, ["-s", "long", "long@localhost"], body)
    assert r.returncode == 0, r.stderr
    raw = delivered(tern, "long")[0]
    assert max(len(line) for line in raw.split(b"\n")) <= 998
    m = parse(raw)
    assert m["Content-Transfer-Encoding"] == "quoted-printable"
    assert m.get_content().encode() == body
    # An empty body is sent (like mailutils' mail) ...
    r = mail(tern, ["-s", "empty", "empty@localhost"], b"")
    assert r.returncode == 0, r.stderr
    assert parse(delivered(tern, "empty")[0])["Subject"] == "empty"
    # ... but not with -E.
    r = mail(tern, ["-E", "-s", "skipped", "skipped@localhost"], b"")
    assert r.returncode == 0, r.stderr
    r = mail(tern, ["-s", "after", "skipped@localhost"], b"x\n")
    got = delivered(tern, "skipped")
    assert [parse(m)["Subject"] for m in got] == ["after"]


def test_usage_errors_and_unreadable_attachment_queue_nothing(tern_factory):
    t = tern_factory()
    for args in (["-s", "no recipient"], ["-x", "root"], ["root", "-a"], ["-s"], []):
        r = mail(t, args, b"body\n")
        assert r.returncode == 64, (args, r)
        assert b"usage: mail" in r.stderr
    r = mail(t, ["-s", "x", "-a", "missing.pdf", "root"], b"body\n")
    assert r.returncode == 66, r
    assert b"missing.pdf" in r.stderr
    r = mail(t, ["-s", "x", "-a", str(t.dir), "root"], b"body\n")  # a directory
    assert r.returncode == 66, r
    r = mail(t, ["bad address@@"], b"body\n")
    assert r.returncode == 65, r
    drops = t.spool / "drop"
    assert not drops.exists() or list(drops.iterdir()) == []
    t.start()
    assert t.queued() == []


def test_non_ascii_and_long_attachment_names(tern):
    names = ["Überblick.csv", "Ergebnisse der nächtlichen Sicherung 日本語 " + "x" * 40 + ".log",
             "plain name.unknownext"]
    for i, n in enumerate(names):
        (tern.dir / n).write_bytes(f"file {i}\n".encode())
    args = ["-s", "names", "names@localhost"]
    for n in names:
        args += ["-a", n]
    r = mail(tern, args, b"")
    assert r.returncode == 0, r.stderr
    raw = delivered(tern, "names")[0]
    m = parse(raw)
    atts = list(m.iter_attachments())
    assert [a.get_filename() for a in atts] == names
    assert [a.get_content_type() for a in atts] == ["text/csv", "text/plain", "application/octet-stream"]
    assert [a.get_payload(decode=True) for a in atts] == [f"file {i}\n".encode() for i in range(3)]
    # Empty body with attachments: no empty text part.
    assert len(list(m.iter_parts())) == 3
    assert all(len(line) <= 78 for line in raw.split(b"\n\n", 1)[0].split(b"\n") if not line.startswith(b"Received:"))
