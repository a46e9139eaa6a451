"""`tern test ADDRESS` (issue 14 part 4): the real binary sends a test
message through the daemon's route to scripted loopback sinks, prints the
dialogue with secrets masked and ends with a diagnosis naming the setting
to change; the exit code says accepted (0), temporary (75) or permanent
(69). No daemon runs: the command drives the delivery itself.

Every peer is on 127.0.0.x; dns_servers points at a loopback FakeDns or a
closed loopback port. Certificates: tests/certs (README)."""

import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from harness import FakeDns, Sink, close_served, free_port

CERTS = Path(__file__).resolve().parents[1] / "certs"


def server_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(CERTS / "server.pem"), str(CERTS / "server.key"))
    return ctx


def run_test(t, *args):
    r = t.cmd("test", *args)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def password_file(tmp_path, pw):
    p = tmp_path / "smarthost.pw"
    p.write_text(pw + "\n")
    p.chmod(0o600)
    return p


def setting_line(out):
    return next((l for l in out.splitlines() if l.startswith("Setting: ")), None)


def test_success_prints_the_dialogue_and_hides_the_password(tern_factory, tmp_path):
    sink = Sink(tls=server_ctx(), auth=("relay-user", "s3cret-pw"))
    try:
        t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls",
                         tls_ca_file=CERTS / "ca.pem", smarthost_user="relay-user",
                         smarthost_password_file=password_file(tmp_path, "s3cret-pw"),
                         sender_address="me@office.test")
        code, out, err = run_test(t, "you@far.test")
        assert code == 0, out + err
        assert f"* connected to localhost[127.0.0.1]:{sink.port}" in out, out
        assert "< 220 sink.test ESMTP" in out, out
        assert "> EHLO mx.test" in out, out
        assert "> STARTTLS" in out and "* TLS established: TLSv1.3" in out, out
        assert "> AUTH PLAIN <credentials hidden>" in out, out
        assert "s3cret-pw" not in out and "s3cret-pw" not in err
        import base64
        secret = base64.b64encode(b"\0relay-user\0s3cret-pw").decode()
        assert secret not in out
        # The daemon's rewriting of locally originated mail applies.
        assert "> MAIL FROM:<me@office.test>" in out, out
        assert "> RCPT TO:<you@far.test>" in out, out
        assert "< 250 2.0.0 queued" in out, out
        assert f"Result: accepted by localhost[127.0.0.1]:{sink.port}" in out, out
        assert len(sink.messages) == 1
        m = sink.messages[0]
        assert m["sender"] == "me@office.test" and m["rcpts"] == ["you@far.test"]
        assert m["tls"] and m["auth"] == "relay-user"
        data = m["data"].decode()
        assert "From: me@office.test\r\n" in data, data
        assert "To: you@far.test\r\n" in data and "Subject: tern test from mx.test\r\n" in data
        assert "Message-ID: <" in data and "Date: " in data
        assert "Envelope sender: <me@office.test> (rewritten from <root@mx.test>)" in data, data
        assert "Route: smarthost localhost:%d (smarthost_tls = starttls)" % sink.port in data
    finally:
        sink.close()


def test_mx_route_through_fake_dns(tern_factory):
    sink = Sink()
    dns = FakeDns({("far.test", "MX"): [(10, "mx1.far.test")],
                   ("mx1.far.test", "A"): ["127.0.0.1"]})
    try:
        t = tern_factory(dns_servers=dns.addr, mx_port=sink.port)
        code, out, err = run_test(t, "-f", "cron@mx.test", "you@far.test")
        assert code == 0, out + err
        assert "* looking up the MX hosts of far.test" in out, out
        assert "10 mx1.far.test [127.0.0.1]" in out, out
        assert sink.messages[0]["sender"] == "cron@mx.test"
        assert ("far.test", "MX") in dns.queries
    finally:
        sink.close()
        dns.close()


class Provider:
    """A plaintext SMTP server scripted per command: `replies` maps
    "greeting", "ehlo", "helo", "auth", "mail", "rcpt", "data", "dot" to a
    reply (an "ehlo" reply may be several lines joined by CRLF). Records the
    messages it accepted. `silent`: accept and never say anything (as an
    implicit-TLS server waiting for the client's hello)."""

    DEFAULTS = {
        "greeting": "220 provider.test ESMTP",
        "ehlo": "250-provider.test\r\n250-PIPELINING\r\n250 AUTH PLAIN LOGIN",
        "helo": "250 provider.test",
        "auth": "235 2.7.0 accepted",
        "mail": "250 2.1.0 ok",
        "rcpt": "250 2.1.5 ok",
        "data": "354 go ahead",
        "dot": "250 2.0.0 queued",
    }

    def __init__(self, replies=None, host="127.0.0.1", port=0, silent=False):
        self.replies = dict(self.DEFAULTS, **(replies or {}))
        self.silent = silent
        self.messages = []
        self.held = []
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(4)
        self.port = self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self):
        close_served(self.lsock, self.thread)
        for c in self.held:
            c.close()

    def _serve(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            if self.silent:
                self.held.append(c)
                continue
            threading.Thread(target=self._session, args=(c,), daemon=True).start()

    def _session(self, c):
        f = c.makefile("rwb")

        def send(r):
            f.write(r.encode() + b"\r\n")
            f.flush()

        send(self.replies["greeting"])
        sender = None
        try:
            for line in f:
                cmd = line.decode(errors="replace").rstrip("\r\n")
                verb = cmd.split(" ")[0].upper()
                if verb in ("EHLO", "HELO", "AUTH", "MAIL", "RCPT"):
                    if verb == "MAIL":
                        sender = cmd[10:].split(">")[0].lstrip("<")
                    send(self.replies[verb.lower()])
                elif verb == "DATA":
                    r = self.replies["data"]
                    send(r)
                    if r.startswith("354"):
                        data = b""
                        for l in f:
                            if l == b".\r\n":
                                break
                            data += l
                        r = self.replies["dot"]
                        if r.startswith("2"):
                            self.messages.append((sender, data))
                        send(r)
                elif verb == "QUIT":
                    send("221 bye")
                    break
                else:
                    send("250 ok")
        except OSError:
            pass
        c.close()


def smarthost_tern(tern_factory, tmp_path, port, tls="none", **more):
    return tern_factory(smarthost=f"127.0.0.1:{port}", smarthost_tls=tls, smarthost_user="u",
                        smarthost_password_file=password_file(tmp_path, "p"), **more)


def test_basic_auth_disabled_names_oauth_and_app_password(tern_factory, tmp_path):
    p = Provider({"auth": "535 5.7.139 Authentication unsuccessful, basic authentication is "
                          "disabled. [BN0PR04CA0001.namprd04.prod.outlook.com]"})
    try:
        t = smarthost_tern(tern_factory, tmp_path, p.port)
        code, out, err = run_test(t, "you@far.test")
        assert code == 69, out + err
        assert "< 535 5.7.139 Authentication unsuccessful" in out, out
        assert "> AUTH PLAIN <credentials hidden>" in out, out
        assert "OAuth2" in out and "app password" in out, out
        assert setting_line(out) == "Setting: smarthost_password_file", out
        assert p.messages == []
    finally:
        p.close()


def test_too_many_logins_says_wait(tern_factory, tmp_path):
    p = Provider({"auth": "454 4.7.0 Too many login attempts, please try again later."})
    try:
        t = smarthost_tern(tern_factory, tmp_path, p.port)
        code, out, err = run_test(t, "you@far.test")
        assert code == 75, out + err
        assert "Diagnosis: the server refuses logins for now" in out, out
        assert "wait a few minutes" in out, out
        assert setting_line(out) == "Setting: none in tern.conf", out
    finally:
        p.close()


def test_wrong_password_names_the_password_file(tern_factory, tmp_path):
    sink = Sink(tls=server_ctx(), auth=("u", "right"))
    try:
        t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls",
                         tls_ca_file=CERTS / "ca.pem", smarthost_user="u",
                         smarthost_password_file=password_file(tmp_path, "wrong-pw"))
        code, out, err = run_test(t, "you@far.test")
        assert code == 69, out + err
        assert "< 535 5.7.8 bad credentials" in out, out
        assert "wrong-pw" not in out
        assert setting_line(out) == "Setting: smarthost_user, smarthost_password_file", out
        assert sink.auth_seen == [("u", "wrong-pw", True)]
    finally:
        sink.close()


def test_sender_not_owned_names_sender_address(tern_factory):
    def mail(txn, cmd):
        if txn["sender"] != "me@office.test":
            return (f"553 5.7.1 <{txn['sender']}>: Sender address rejected: "
                    "not owned by user u")
        return "250 2.1.0 ok"

    sink = Sink({"mail": mail}, extensions=("8BITMIME",))  # lock-step: no RCPT after MAIL
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none")
        code, out, err = run_test(t, "you@far.test")
        assert code == 69, out + err
        assert "> MAIL FROM:<root@mx.test>" in out, out
        assert "Sender address rejected: not owned by user u" in out, out
        assert setting_line(out) == "Setting: sender_address, sender_rewrite", out
        assert sink.messages == []
        # The fix the diagnosis names works.
        t.settings["sender_address"] = "me@office.test"
        t.write_config()
        code, out, err = run_test(t, "you@far.test")
        assert code == 0, out + err
        assert "* sender: <root@mx.test> rewritten to <me@office.test>" in out, out
        assert [m["sender"] for m in sink.messages] == ["me@office.test"]
    finally:
        sink.close()


def test_starttls_required_with_tls_none_names_smarthost_tls(tern_factory, tmp_path):
    p = Provider({"ehlo": "250-provider.test\r\n250 STARTTLS",
                  "mail": "530 5.7.0 Must issue a STARTTLS command first"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{p.port}", smarthost_tls="none")
        code, out, err = run_test(t, "you@far.test")
        assert code == 69, out + err
        assert setting_line(out) == "Setting: smarthost_tls", out
        assert "set smarthost_tls = starttls" in out, out
    finally:
        p.close()


def test_unknown_ca_names_tls_ca_file(tern_factory):
    sink = Sink(tls=server_ctx())
    try:
        t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls",
                         tls_ca_file=CERTS / "other-ca.pem")
        code, out, err = run_test(t, "you@far.test")
        assert code == 75, out + err
        assert "* TLS failed: certificate verify failed: unknown issuer" in out, out
        assert setting_line(out) == "Setting: tls_ca_file", out
        assert "bundled-roots" in out, out
        assert "MAIL FROM" not in out and sink.messages == []
    finally:
        sink.close()


def test_starttls_to_port_465_says_implicit_tls(tern_factory):
    """Port 465 needs root to bind; the address 127.0.0.46 keeps this test
    apart from others that listen on 127.0.0.1:465."""
    try:
        p = Provider(host="127.0.0.46", port=465, silent=True)
    except OSError as e:
        pytest.skip(f"cannot listen on port 465: {e}")
    try:
        t = tern_factory(smarthost="127.0.0.46:465", smarthost_tls="starttls",
                         tls_ca_file=CERTS / "ca.pem", client_timeout="2s")
        start = time.monotonic()
        code, out, err = run_test(t, "you@far.test")
        took = time.monotonic() - start
        assert code == 75, out + err
        assert "port 465 speaks implicit TLS; set smarthost_tls = tls" in out, out
        assert setting_line(out) == "Setting: smarthost_tls", out
        assert took < 10, took
    finally:
        p.close()


def test_silent_server_asks_about_implicit_tls(tern_factory):
    """Any other port: the server's silence ends at client_timeout with the
    question whether it speaks implicit TLS."""
    p = Provider(silent=True)
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{p.port}", smarthost_tls="starttls",
                         tls_ca_file=CERTS / "ca.pem", client_timeout="2s")
        code, out, err = run_test(t, "you@far.test")
        assert code == 75, out + err
        assert "does it speak implicit TLS on this port?" in out, out
        assert setting_line(out) == "Setting: smarthost_tls", out
    finally:
        p.close()


def test_implicit_tls_to_a_plaintext_server_says_starttls_quickly(tern_factory):
    sink = Sink()
    try:
        t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="tls",
                         tls_ca_file=CERTS / "ca.pem")
        start = time.monotonic()
        code, out, err = run_test(t, "you@far.test")
        took = time.monotonic() - start
        assert code == 75, out + err
        assert "the server answered in plaintext, not TLS: 220 sink.test ESMTP" in out, out
        assert "set smarthost_tls = starttls" in out, out
        assert setting_line(out) == "Setting: smarthost_tls", out
        assert took < 5, took
    finally:
        sink.close()


def test_ehlo_refused_names_helo_name(tern_factory):
    p = Provider({"ehlo": "550 5.7.1 Invalid HELO name", "helo": "550 5.7.1 Invalid HELO name"})
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{p.port}", smarthost_tls="none")
        code, out, err = run_test(t, "you@far.test")
        assert code == 69, out + err
        assert "> EHLO mx.test" in out and "> HELO mx.test" in out, out
        assert setting_line(out) == "Setting: helo_name", out
    finally:
        p.close()


def test_connection_refused_names_smarthost(tern_factory):
    port = free_port()
    t = tern_factory(smarthost=f"127.0.0.1:{port}", smarthost_tls="none")
    code, out, err = run_test(t, "you@far.test")
    assert code == 75, out + err
    assert f"* cannot connect to 127.0.0.1[127.0.0.1]:{port}: connection refused" in out, out
    assert setting_line(out) == "Setting: smarthost", out


def test_dns_failure_names_dns_servers(tern_factory):
    dns = FakeDns({}, servfail=("smtp.provider.test",))
    try:
        t = tern_factory(smarthost="smtp.provider.test:587", dns_servers=dns.addr)
        code, out, err = run_test(t, "you@far.test")
        assert code == 75, out + err
        assert setting_line(out) == "Setting: smarthost, dns_servers", out
    finally:
        dns.close()


def test_usage_and_local_address(tern_factory):
    t = tern_factory()
    code, out, err = run_test(t)
    assert code == 64 and "usage: tern [-c FILE] test [-f FROM] ADDRESS" in err
    code, out, err = run_test(t, "someone@mx.test")
    assert code == 64 and "local_domains" in err, err


def test_clock_before_the_certificate_says_ntp(tern_factory):
    """The router's clock says 2020: the server's certificate is "not yet
    valid"; the diagnosis is the clock (NTP), not tern.conf."""
    from harness import faketime_env
    sink = Sink(tls=server_ctx())
    try:
        t = tern_factory(smarthost=f"localhost:{sink.port}", smarthost_tls="starttls",
                         tls_ca_file=CERTS / "ca.pem")
        r = t.cmd("test", "you@far.test", env=faketime_env(FAKETIME="@2020-01-01 00:00:00"))
        out = r.stdout.decode(errors="replace")
        assert r.returncode == 75, out + r.stderr.decode(errors="replace")
        assert "certificate not valid before" in out and "is before this tern was built" in out, out
        assert "this host's clock is wrong" in out and "NTP" in out, out
        assert setting_line(out) == "Setting: none in tern.conf", out
        assert sink.messages == []
    finally:
        sink.close()
