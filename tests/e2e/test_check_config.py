"""`check-config` checks what start-up checks (issue 13, item 5): an init
script that runs it before a start or a reload learns about a missing
account, TLS file or users file before the daemon fails on it."""

import subprocess

from harness import TERN_BIN, Tern


def check(t):
    r = subprocess.run([TERN_BIN, "-c", str(t.conf), "check-config"],
                       capture_output=True, timeout=30)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def self_signed(dir, name):
    key, cert = dir / f"{name}.key", dir / f"{name}.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_a_good_configuration_is_ok(tmp_path):
    cert, key = self_signed(tmp_path, "mx.test")
    users = tmp_path / "users"
    users.write_text("")
    t = Tern(tmp_path, tls_cert=cert, tls_key=key, tls_ca_file=cert, users_file=users)
    code, out, err = check(t)
    assert (code, err) == (0, ""), err
    assert out.strip().endswith(": ok")


def test_problems_the_daemon_would_meet_at_start_are_errors(tmp_path):
    cert_a, key_a = self_signed(tmp_path, "a.test")
    _, key_b = self_signed(tmp_path, "b.test")
    cases = [
        ({"user": "nosuchuser"}, "user = nosuchuser"),
        ({"tls_cert": tmp_path / "missing.pem", "tls_key": key_a}, "missing.pem"),
        ({"tls_cert": cert_a, "tls_key": key_b}, "the key does not belong to the certificate"),
        ({"tls_ca_file": tmp_path / "no-ca.pem"}, "no-ca.pem"),
        ({"users_file": tmp_path / "no-users"}, "no-users"),
        ({"smarthost": "127.0.0.1:2", "smarthost_user": "me", "smarthost_password_file": tmp_path / "no-secret"},
         "no-secret"),
    ]
    for i, (settings, named) in enumerate(cases):
        d = tmp_path / f"case{i}"
        d.mkdir()
        code, out, err = check(Tern(d, **settings))
        assert code == 1, (settings, code, out, err)
        assert named in err, (settings, err)
        assert ": ok" not in out


def test_port_465_with_starttls_is_a_warning(tmp_path):
    t = Tern(tmp_path, smarthost="smtp.example.com:465", smarthost_tls="starttls")
    code, out, err = check(t)
    assert code == 0, err
    assert "warning" in err and "smarthost_tls = tls" in err, err
