"""OpenWrt's UCI file (issue 14, part 6): /etc/config/tern is rendered to a
tern.conf by etc/openwrt/tern-uci2conf (plain awk, run by the procd init
at start and reload). The rendering is tested here without OpenWrt: a
daemon runs on the rendered file and delivers."""

import smtplib
import subprocess
from pathlib import Path

from harness import TERN_BIN, wait_for

ROOT = Path(__file__).resolve().parents[2]
RENDER = ROOT / "etc" / "openwrt" / "tern-uci2conf"


def render(path):
    r = subprocess.run(["sh", str(RENDER), str(path)], capture_output=True, timeout=30)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def uci_quote(v):
    return "'" + v.replace("'", "'\\''") + "'"


def test_a_daemon_runs_on_the_rendered_uci_file(tmp_path, tern_factory):
    t = tern_factory()
    uci = ["# written by LuCI", "config tern 'main'", "\toption enabled '1'"]
    for k, v in t.settings.items():
        if v is None:
            continue
        parts = [p.strip() for p in str(v).split(",")] if k in ("listen", "local_domains") else [str(v)]
        if len(parts) > 1 or k == "listen":
            uci += [f"\tlist {k} {uci_quote(p)}" for p in parts]
        else:
            uci.append(f"\toption {k} {uci_quote(str(v))}")
    uci += ["", "config other 'ignored'", "\toption hostname 'not.this.one'"]
    (tmp_path / "tern.uci").write_text("\n".join(uci) + "\n")
    code, out, err = render(tmp_path / "tern.uci")
    assert code == 0, err
    rendered = dict(l.split(" = ", 1) for l in out.splitlines())
    want = {k: str(v) for k, v in t.settings.items() if v is not None}
    assert rendered == want, (rendered, want)
    t.conf.write_text(out)
    ok = subprocess.run([TERN_BIN, "-c", str(t.conf), "check-config"], capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr.decode()
    t.start()  # on the rendered file
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail("a@remote.test", ["joe@localhost"], b"Subject: uci\r\n\r\nrendered\r\n")
    assert b"rendered" in wait_for(lambda: t.maildir("joe"), what="delivery")[0]


def test_quotes_lists_and_errors(tmp_path):
    f = tmp_path / "tern.uci"
    f.write_text(
        "config tern 'main'\n"
        "\toption hostname router.lan\n"
        "\toption sender_address \"Cron <me@example.com>\"\n"
        "\toption smarthost_user 'it'\\''s'\n"
        "\tlist relay_networks '127.0.0.0/8'\n"
        "\tlist relay_networks \"192.168.1.0/24\"\n"
    )
    code, out, err = render(f)
    assert code == 0, err
    assert out.splitlines() == [
        "hostname = router.lan",
        "sender_address = Cron <me@example.com>",
        "smarthost_user = it's",
        "relay_networks = 127.0.0.0/8, 192.168.1.0/24",
    ], out
    f.write_text("config tern 'main'\n\tbogus x y\n\toption Bad 1\n")
    code, _, err = render(f)
    assert code == 1
    assert "line 2: unknown keyword bogus" in err and "line 3: bad option name Bad" in err, err


def test_the_shipped_example_renders_to_known_keys(tmp_path):
    code, out, err = render(ROOT / "etc" / "openwrt" / "tern.uci")
    assert code == 0, err
    keys = [l.split(" = ", 1)[0] for l in out.splitlines()]
    shipped = (ROOT / "etc" / "tern.conf").read_text()
    for k in keys:
        assert f"# {k} =" in shipped, f"{k} is not a tern.conf key"
    assert "listen = 0.0.0.0:25" in out.splitlines()
    assert "relay_networks = 127.0.0.0/8, ::1/128, 192.168.1.0/24" in out.splitlines()
