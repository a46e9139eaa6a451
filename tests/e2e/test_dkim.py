"""Issue 15 part 5: DKIM signing (RFC 6376; Ed25519 per RFC 8463) of mail
that leaves the host (SPEC key `dkim_keys`, command `tern dkim keygen`).

tern relays to a sink; the received message is verified with dkimpy, whose
DNS lookups are answered with the TXT record `tern dkim keygen` printed
(no real DNS)."""

import email
import re
import signal
import smtplib
import subprocess

import dkim
import pytest

from harness import TERN_BIN, Sink, wait_for


@pytest.fixture
def sinks():
    made = []

    def make(**kw):
        s = Sink(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def keygen(dirpath, domain, selector, *flags):
    r = subprocess.run([TERN_BIN, "dkim", "keygen", domain, selector, "--dir", str(dirpath), *flags],
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().strip()
    prefix = f"{selector}._domainkey.{domain} IN TXT "
    assert out.startswith(prefix), out
    txt = "".join(re.findall(r'"([^"]*)"', out[len(prefix):]))
    key = dirpath / f"{domain}.{selector}.key"
    assert key.stat().st_mode & 0o777 == 0o600
    return f"{selector}._domainkey.{domain}.", txt, key


def signing_tern(tern_factory, sink, keys, **overrides):
    """A tern relaying to `sink` with a dkim_keys file of `keys`
    ((domain, selector, flags) triples); returns (tern, {dns name: txt})."""
    t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none", **overrides)
    records = {}
    lines = ["# DKIM keys\n", "\n"]
    for domain, selector, flags in keys:
        name, txt, key = keygen(t.dir, domain, selector, *flags)
        records[name] = txt
        lines.append(f"{domain} {selector} {key.name}\n")
    (t.dir / "dkim_keys").write_text("".join(lines))
    t.settings["dkim_keys"] = str(t.dir / "dkim_keys")
    t.write_config()
    return t, records


def verify(data, records):
    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        return records.get(name, "").encode() or None

    return dkim.verify(data, dnsfunc=dnsfunc)


def send(t, sender, rcpts, body):
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail(sender, rcpts, body)


def signature(data):
    msg = email.message_from_bytes(data)
    sig = msg["DKIM-Signature"]
    assert sig is not None, data[:500]
    return re.sub(r"\s+", "", str(sig))


LONG_TO = ", ".join(f"Person Number {i} <person{i}@far.test>" for i in range(12))

MESSAGE = (
    b"From: Alice Example <alice@example.com>\r\n"
    + b"To: " + LONG_TO.encode().replace(b", ", b",\r\n    ") + b"\r\n"
    b"Subject: a long subject line that is folded over\r\n"
    b"   two lines   with\tdouble  spaces\r\n"
    b"Date: Thu, 03 Dec 2026 05:00:00 +0000\r\n"
    b"Message-ID: <m1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"X-Not-Signed: whatever\r\n"
    b"\r\n"
    b"Hello,  \tworld   \r\n"
    b".a line starting with a dot\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln \t \r\n"
    b"   indented\r\n"
    b"\r\n"
    b"  \t \r\n"
    b"\r\n"
)


@pytest.mark.parametrize("flags,alg", [((), "rsa-sha256"), (("--ed25519",), "ed25519-sha256")])
def test_signed_mail_verifies(tern_factory, sinks, flags, alg):
    sink = sinks()
    t, records = signing_tern(tern_factory, sink, [("example.com", "s1", flags)])
    t.start()
    send(t, "alice@example.com", ["bob@far.test"], MESSAGE)
    wait_for(lambda: sink.messages, what="delivery")
    data = sink.messages[0]["data"]
    assert data.startswith(b"DKIM-Signature: v=1; a=" + alg.encode()), data[:300]
    head = data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n")[:8]), head[:600]
    sig = signature(data)
    assert "c=relaxed/relaxed" in sig and "d=example.com" in sig and "s=s1" in sig
    h = re.search(r"h=([^;]*)", sig).group(1).split(":")
    assert h.count("from") == 2  # oversigned
    assert "x-not-signed" not in h and "subject" in h and "content-transfer-encoding" in h
    assert re.search(r"t=\d+", sig)
    assert verify(data, records), data[:800]
    # Tampering with the body or a signed field breaks it.
    assert not verify(data.replace(b"world", b"World"), records)
    assert not verify(data.replace(b"Subject: a long", b"Subject: A long"), records)


def test_downgraded_8bit_body_is_signed_as_sent(tern_factory, sinks):
    # A sink without 8BITMIME: tern converts the 8-bit text to
    # quoted-printable, and the signature must cover the converted bytes.
    sink = sinks(extensions=("PIPELINING", "SIZE 100000000"))
    t, records = signing_tern(tern_factory, sink, [("example.com", "s1", ("--ed25519",))])
    t.start()
    send(t, "alice@example.com", ["bob@far.test"], MESSAGE)
    wait_for(lambda: sink.messages, what="delivery")
    data = sink.messages[0]["data"]
    assert b"quoted-printable" in data and b"\xc3" not in data, data
    assert verify(data, records), data


def test_large_message_is_signed_over_many_turns(tern_factory, sinks):
    sink = sinks()
    t, records = signing_tern(tern_factory, sink, [("example.com", "big", ())])
    t.start()
    body = b"".join(b"line %07d  with   spaces \t\r\n" % i for i in range(100000))
    msg = b"From: alice@example.com\r\nTo: bob@far.test\r\nSubject: big\r\n\r\n" + body
    send(t, "alice@example.com", ["bob@far.test"], msg)
    wait_for(lambda: sink.messages, timeout=60, what="delivery")
    data = sink.messages[0]["data"]
    assert len(data) > 3_000_000
    assert verify(data, records)


def test_other_domains_and_local_delivery_are_not_signed(tern_factory, sinks):
    sink = sinks()
    t, records = signing_tern(tern_factory, sink, [("example.com", "s1", ("--ed25519",))])
    t.start()
    send(t, "carol@other.test", ["bob@far.test"],
         b"From: carol@other.test\r\nSubject: x\r\n\r\nbody\r\n")
    wait_for(lambda: sink.messages, what="delivery")
    assert b"DKIM-Signature" not in sink.messages[0]["data"]
    # A key for the From: domain, but the recipient is local.
    send(t, "alice@example.com", ["joe@mx.test"],
         b"From: alice@example.com\r\nSubject: local\r\n\r\nbody\r\n")
    local = wait_for(lambda: t.maildir("joe"), what="local delivery")[0]
    assert b"Subject: local" in local and b"DKIM-Signature" not in local
    # Then a signed one, over the same daemon.
    send(t, "alice@example.com", ["bob@far.test"],
         b"From: alice@example.com\r\nSubject: y\r\n\r\nbody\r\n")
    wait_for(lambda: len(sink.messages) == 2, what="second delivery")
    assert verify(sink.messages[1]["data"], records)


def test_rewritten_sender_is_signed_for_its_new_domain(tern_factory, sinks):
    # Cron mail from root@router.lan leaves as me@example.com: the From:
    # as sent decides the key, and the signature covers the rewritten field.
    sink = sinks()
    t, records = signing_tern(
        tern_factory, sink, [("example.com", "s1", ())],
        local_domains="localhost, mx.test, router.lan", qualify_domain="router.lan",
        sender_address="me@example.com")
    (t.dir / "aliases").write_text("root: far@remote.test\n")
    t.start()
    r = subprocess.run([TERN_BIN, "-c", str(t.conf), "sendmail", "-i", "root"],
                       input=b"From: Cron Daemon <root>\nSubject: backup\n\nbackup done\n",
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: sink.messages, what="delivery")
    data = sink.messages[0]["data"]
    assert b"From: Cron Daemon <me@example.com>" in data
    assert verify(data, records), data


def test_check_config_names_bad_lines(tern_factory, sinks):
    sink = sinks()
    t, _ = signing_tern(tern_factory, sink, [("example.com", "s1", ("--ed25519",))])
    keys = t.dir / "dkim_keys"
    keys.write_text(keys.read_text() + "example.org s2\nexample.net s3 missing.key\n")
    r = t.cmd("check-config")
    assert r.returncode == 1
    err = r.stderr.decode()
    assert f"{keys}:4: expected DOMAIN SELECTOR KEYFILE" in err, err
    assert f"{keys}:5: missing.key:" in err, err


def test_keygen_refuses_to_overwrite(tmp_path):
    keygen(tmp_path, "example.com", "s1", "--ed25519")
    r = subprocess.run([TERN_BIN, "dkim", "keygen", "example.com", "s1", "--ed25519",
                        "--dir", str(tmp_path)], capture_output=True, timeout=30)
    assert r.returncode != 0 and b"exists" in r.stderr, r.stderr


def test_reload_takes_new_keys_and_keeps_old_ones_on_errors(tern_factory, sinks):
    sink = sinks()
    t, records = signing_tern(tern_factory, sink, [("example.com", "s1", ("--ed25519",))])
    t.start()
    keys = t.dir / "dkim_keys"
    good = keys.read_text()

    def reload():
        before = t.log_text().count("configuration reloaded")
        t.send(signal.SIGHUP)
        wait_for(lambda: t.log_text().count("configuration reloaded") > before, what="reload")

    def deliver(sender, n):
        send(t, sender, ["bob@far.test"], f"From: {sender}\r\nSubject: {n}\r\n\r\nx\r\n".encode())
        wait_for(lambda: len(sink.messages) == n, what=f"delivery {n}")
        return sink.messages[n - 1]["data"]

    # A broken file: the old keys stay.
    keys.write_text(good + "other.test s9 missing.key\n")
    reload()
    assert "reload: keeping the old DKIM keys" in t.log_text()
    assert verify(deliver("alice@example.com", 1), records)
    # A good new file: its keys take over.
    name, txt, key = keygen(t.dir, "other.test", "s2", "--ed25519")
    records[name] = txt
    keys.write_text(f"other.test s2 {key.name}\n")
    reload()
    assert verify(deliver("carol@other.test", 2), records)
    assert b"DKIM-Signature" not in deliver("alice@example.com", 3)


@pytest.mark.parametrize("kind", ["rsa-pkcs1", "ed25519-openssl"])
def test_keys_made_by_openssl_sign(tern_factory, sinks, kind):
    # PKCS#1 "BEGIN RSA PRIVATE KEY" and OpenSSL's PKCS#8 v1 Ed25519 keys
    # load as they are; the record is made from openssl's public key.
    import base64
    sink = sinks()
    t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none")
    key = t.dir / "k.pem"
    if kind == "rsa-pkcs1":
        subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"],
                       check=True, capture_output=True)
        assert key.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    else:
        subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)],
                       check=True, capture_output=True)
    pub = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    if kind == "rsa-pkcs1":
        txt = "v=DKIM1; k=rsa; p=" + base64.b64encode(pub).decode()
    else:
        txt = "v=DKIM1; k=ed25519; p=" + base64.b64encode(pub[-32:]).decode()
    (t.dir / "dkim_keys").write_text("example.com sel k.pem\n")
    t.settings["dkim_keys"] = str(t.dir / "dkim_keys")
    t.write_config()
    assert t.cmd("check-config").returncode == 0
    t.start()
    send(t, "alice@example.com", ["bob@far.test"], MESSAGE)
    wait_for(lambda: sink.messages, what="delivery")
    assert verify(sink.messages[0]["data"], {"sel._domainkey.example.com.": txt})
