"""TLS and AUTH with real clients (smtplib, openssl s_client, swaks) and a
loopback TLS sink as the smarthost. Certificates: tests/certs (README)."""

import smtplib
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from harness import TERN_BIN, Sink, free_port, wait_for

CERTS = Path(__file__).resolve().parents[1] / "certs"


def client_ctx():
    ctx = ssl.create_default_context(cafile=str(CERTS / "ca.pem"))
    return ctx


def server_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(CERTS / "server.pem"), str(CERTS / "server.key"))
    return ctx


@pytest.fixture
def tls_tern(tern_factory, tmp_path):
    users = tmp_path / "users"
    r = subprocess.run([TERN_BIN, "passwd", "joe"], input=b"s3cret pass\n", capture_output=True, timeout=10)
    assert r.returncode == 0, r.stderr
    users.write_text(r.stdout.decode())
    t = tern_factory(
        tls_cert=CERTS / "server.pem",
        tls_key=CERTS / "server.key",
        users_file=users,
        submission_listen=f"127.0.0.1:{free_port()}",
        smtps_listen=f"127.0.0.1:{free_port()}",
        relay_networks="10.255.0.0/16",
    )
    t.sub_port = int(t.settings["submission_listen"].rsplit(":", 1)[1])
    t.smtps_port = int(t.settings["smtps_listen"].rsplit(":", 1)[1])
    return t.start()


def test_starttls_auth_submission_with_smtplib(tls_tern):
    t = tls_tern
    with smtplib.SMTP("127.0.0.1", t.sub_port, timeout=10) as c:
        c.ehlo("laptop.test")
        assert c.has_extn("starttls") and not c.has_extn("auth")
        c.starttls(context=client_ctx())
        c.ehlo("laptop.test")
        assert "PLAIN" in c.esmtp_features["auth"]
        c.login("joe", "s3cret pass")
        c.sendmail("joe@lan.test", ["friend@localhost"], b"Subject: via submission\r\n\r\nhello\r\n")
    got = wait_for(lambda: t.maildir("friend"), what="delivery")
    assert b"with ESMTPSA id" in got[0] and b"(using TLSv1.3" in got[0]


def test_implicit_tls_smtps(tls_tern):
    t = tls_tern
    with smtplib.SMTP_SSL("127.0.0.1", t.smtps_port, context=client_ctx(), timeout=10) as c:
        c.login("joe", "s3cret pass")
        c.sendmail("joe@lan.test", ["x@far.test"], b"Subject: smtps\r\n\r\nrelayed after auth\r\n")
    wait_for(lambda: t.queued() or "x@far.test" in t.log_text(), what="accepted for relay")


def test_starttls_tls12_client(tls_tern):
    # Older clients and smarthosts speak only TLS 1.2: the server side must too.
    t = tls_tern
    ctx = client_ctx()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with smtplib.SMTP("127.0.0.1", t.sub_port, timeout=10) as c:
        c.starttls(context=ctx)
        assert c.sock.version() == "TLSv1.2"
        c.login("joe", "s3cret pass")
        c.sendmail("joe@lan.test", ["friend@localhost"], b"Subject: tls12\r\n\r\nhello\r\n")
    got = wait_for(lambda: t.maildir("friend"), what="delivery")
    assert b"(using TLSv1.2" in got[0]


def test_auth_failures_and_order(tls_tern):
    t = tls_tern
    # MAIL before AUTH on submission.
    with smtplib.SMTP("127.0.0.1", t.sub_port, timeout=10) as c:
        c.starttls(context=client_ctx())
        c.ehlo("x")
        code, _ = c.mail("a@b.test")
        assert code == 530
    # AUTH before TLS.
    s = socket.create_connection(("127.0.0.1", t.sub_port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO x\r\n")
    while f.readline()[3:4] == b"-":
        pass
    s.sendall(b"AUTH PLAIN AGpvZQBzM2NyZXQgcGFzcw==\r\n")
    assert f.readline().startswith(b"538 5.7.11")
    s.close()
    # Wrong password: 535 5.7.8 (after a delay).
    with smtplib.SMTP("127.0.0.1", t.sub_port, timeout=20) as c:
        c.starttls(context=client_ctx())
        c.ehlo("x")
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            c.login("joe", "wrong")
        assert e.value.smtp_code == 535
    assert "auth: failed" in t.log_text()
    assert "wrong" not in t.log_text()


def test_starttls_injection_is_discarded(tls_tern):
    t = tls_tern
    s = socket.create_connection(("127.0.0.1", t.port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO x\r\n")
    while f.readline()[3:4] == b"-":
        pass
    # The plaintext-injection attack: a command pipelined after STARTTLS.
    s.sendall(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
    assert f.readline().startswith(b"220")
    tls = client_ctx().wrap_socket(s, server_hostname="localhost")
    tf = tls.makefile("rb")
    tls.sendall(b"EHLO again\r\n")
    first = tf.readline()
    assert first.startswith(b"250-"), first  # EHLO's reply, not a reply to the injected MAIL
    while True:
        l = tf.readline()
        if l[3:4] == b" ":
            break
    tls.sendall(b"RCPT TO:<x@localhost>\r\n")
    assert tf.readline().startswith(b"503"), "no MAIL transaction was started by the injected command"
    tls.close()


def test_openssl_s_client_starttls(tls_tern):
    t = tls_tern
    r = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{t.port}",
         "-CAfile", str(CERTS / "ca.pem"), "-verify_return_error", "-servername", "localhost", "-ign_eof"],
        input=b"EHLO s-client.test\r\nQUIT\r\n", capture_output=True, timeout=20,
    )
    out = r.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out, out[-2000:]
    assert "250 AUTH PLAIN LOGIN" in out or "250-AUTH PLAIN LOGIN" in out, out[-1000:]


def test_swaks_tls_auth(tls_tern):
    t = tls_tern
    r = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{t.sub_port}", "--tls", "--tls-ca-path", str(CERTS / "ca.pem"),
         "--tls-verify", "--auth", "LOGIN", "--auth-user", "joe", "--auth-password", "s3cret pass",
         "--from", "joe@lan.test", "--to", "swaks@localhost", "--body", "swaks over tls"],
        capture_output=True, timeout=30,
    )
    assert r.returncode == 0, (r.stdout + r.stderr).decode(errors="replace")[-2000:]
    got = wait_for(lambda: t.maildir("swaks"), what="swaks delivery")
    assert b"swaks over tls" in got[0]


def write_password(tmp_path, pw):
    p = tmp_path / "smarthost.pw"
    p.write_text(pw + "\n")
    p.chmod(0o600)
    return p


def test_smarthost_starttls_verified_with_auth(tern_factory, tmp_path):
    sink = Sink(tls=server_ctx(), auth=("relay-user", "relay-pw"))
    try:
        t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls",
                         tls_ca_file=CERTS / "ca.pem", smarthost_user="relay-user",
                         smarthost_password_file=write_password(tmp_path, "relay-pw")).start()
        with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
            c.sendmail("cam@lan.test", ["me@gmail.test"], b"Subject: printer\r\n\r\ntoner low\r\n")
        wait_for(lambda: sink.messages, what="delivery through the TLS smarthost")
        m = sink.messages[0]
        assert m["tls"] and m["auth"] == "relay-user"
        assert sink.auth_seen == [("relay-user", "relay-pw", True)]
        assert "relay-pw" not in t.log_text()
    finally:
        sink.close()


def test_smarthost_implicit_tls(tern_factory, tmp_path):
    sink = Sink(tls=server_ctx(), implicit_tls=True, auth=("u", "p"))
    try:
        t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="tls",
                         tls_ca_file=CERTS / "ca.pem", smarthost_user="u",
                         smarthost_password_file=write_password(tmp_path, "p")).start()
        with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
            c.sendmail("cam@lan.test", ["me@office.test"], b"Subject: 465\r\n\r\nimplicit\r\n")
        wait_for(lambda: sink.messages, what="delivery over implicit TLS")
        assert sink.messages[0]["tls"] and sink.messages[0]["auth"] == "u"
    finally:
        sink.close()


def test_smarthost_tls12_only(tern_factory, tmp_path):
    ctx = server_ctx()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    sink = Sink(tls=ctx, auth=("u", "p"))
    try:
        t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls",
                         tls_ca_file=CERTS / "ca.pem", smarthost_user="u",
                         smarthost_password_file=write_password(tmp_path, "p")).start()
        with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
            c.sendmail("cam@lan.test", ["me@office.test"], b"Subject: 1.2\r\n\r\nold smarthost\r\n")
        wait_for(lambda: sink.messages, what="delivery through a TLS 1.2 smarthost")
        assert sink.messages[0]["tls"] and sink.messages[0]["auth"] == "u"
    finally:
        sink.close()


def test_smarthost_wrong_ca_defers_and_sends_nothing_in_clear(tern_factory, tmp_path):
    sink = Sink(tls=server_ctx(), auth=("u", "p"))
    try:
        t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls",
                         tls_ca_file=CERTS / "other-ca.pem", smarthost_user="u",
                         smarthost_password_file=write_password(tmp_path, "p")).start()
        with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
            c.sendmail("cam@lan.test", ["me@office.test"], b"Subject: x\r\n\r\nsecret body\r\n")
        wait_for(lambda: "status=deferred" in t.log_text(), what="deferral")
        assert sink.messages == [] and sink.auth_seen == []
        assert t.queued()
    finally:
        sink.close()


def test_smarthost_wrong_password_defers(tern_factory, tmp_path):
    sink = Sink(tls=server_ctx(), auth=("u", "right"))
    try:
        t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls",
                         tls_ca_file=CERTS / "ca.pem", smarthost_user="u",
                         smarthost_password_file=write_password(tmp_path, "wrong")).start()
        with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
            c.sendmail("cam@lan.test", ["me@office.test"], b"Subject: x\r\n\r\nbody\r\n")
        wait_for(lambda: "status=deferred" in t.log_text(), what="deferral")
        # The state file is written just after the log line.
        q = wait_for(lambda: (lambda q: q if "(pending)" not in q else None)(t.cmd("mailq").stdout.decode()),
                     what="the reason in mailq")
        assert "535 5.7.8 bad credentials" in q, q
        assert t.maildir("cam") == []
    finally:
        sink.close()


def test_opportunistic_mx_tls(tern_factory):
    from harness import FakeDns

    sink = Sink(tls=server_ctx())
    dns = FakeDns({("far.test", "MX"): [(10, "mx.far.test")], ("mx.far.test", "A"): ["127.0.0.1"]})
    try:
        t = tern_factory(dns_servers=dns.addr, mx_port=sink.port).start()
        with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
            c.sendmail("a@lan.test", ["u@far.test"], b"Subject: mx tls\r\n\r\nbody\r\n")
        wait_for(lambda: sink.messages, what="MX delivery")
        assert sink.messages[0]["tls"], "STARTTLS was offered, so it was used"
    finally:
        sink.close()
        dns.close()


def _peer_cn(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"EHLO x\r\n")
    while f.readline()[3:4] == b"-":
        pass
    s.sendall(b"STARTTLS\r\n")
    assert f.readline().startswith(b"220")
    t = client_ctx().wrap_socket(s, server_hostname="localhost")
    cn = dict(x[0] for x in t.getpeercert()["subject"])["commonName"]
    return t, cn


def test_sighup_reloads_certificate_and_keeps_sessions(tern_factory, tmp_path):
    import shutil
    import signal

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(CERTS / "server.pem", cert)
    shutil.copy(CERTS / "server.key", key)
    t = tern_factory(tls_cert=cert, tls_key=key).start()
    old_session, cn = _peer_cn(t.port)
    assert cn == "localhost"
    # A broken certificate on reload: the old one stays in use.
    cert.write_text("not a certificate\n")
    t.send(signal.SIGHUP)
    wait_for(lambda: "keeping the old certificate" in t.log_text(), what="refused certificate")
    s2, cn = _peer_cn(t.port)
    assert cn == "localhost"
    s2.close()
    # A new certificate (same key, new subject, signed by the test CA) is used by new sessions.
    csr = tmp_path / "new.csr"
    subprocess.run(["openssl", "req", "-new", "-key", str(key), "-subj", "/CN=reloaded", "-out", str(csr)],
                   check=True, capture_output=True, timeout=30)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(CERTS / "ca.pem"), "-CAkey",
                    str(CERTS / "ca.key"), "-CAcreateserial", "-CAserial", str(tmp_path / "ca.srl"),
                    "-days", "30", "-sha256", "-extfile", str(CERTS / "server.ext"), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    t.send(signal.SIGHUP)
    wait_for(lambda: t.log_text().count("configuration reloaded") >= 2, what="second reload")
    s3, cn = _peer_cn(t.port)
    assert cn == "reloaded"
    s3.close()
    # The session opened before both reloads still works.
    old_session.sendall(b"EHLO still\r\n")
    assert old_session.recv(100).startswith(b"250")
    old_session.close()
