"""`helo_name` (issue 14, part 6): the name tern sends in outbound EHLO.
Providers refuse `EHLO localhost`: tern never sends it (a host whose name
is localhost says its address literal), and refuses `helo_name = localhost`
in the configuration."""

import subprocess

from harness import TERN_BIN, Sink, Tern, wait_for
from test_outbound import send


def ehlo_checking_sink():
    """A smarthost that records every EHLO and refuses `EHLO localhost`
    the way providers do."""
    seen = []

    def ehlo(txn, cmd):
        seen.append(cmd)
        if cmd.split(" ", 1)[-1].lower().startswith("localhost"):
            return "550 5.7.1 EHLO localhost refused: use your own name"
        return None  # the sink's normal EHLO reply

    sink = Sink({"ehlo": ehlo})
    sink.ehlos = seen
    return sink


def test_helo_name_is_sent_instead_of_the_host_name(tern_factory):
    sink = ehlo_checking_sink()
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         hostname="router.lan", helo_name="out.example.net").start()
        send(t, "cam@lan.test", ["a@far.test"])
        wait_for(lambda: sink.messages, what="delivery")
        assert sink.ehlos == ["EHLO out.example.net"], sink.ehlos
    finally:
        sink.close()


def test_a_host_named_localhost_says_its_address_literal(tern_factory):
    sink = ehlo_checking_sink()
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none",
                         hostname="localhost", local_domains="localhost").start()
        send(t, "cam@lan.test", ["a@far.test"])
        wait_for(lambda: sink.messages, what="delivery")
        assert sink.ehlos == ["EHLO [127.0.0.1]"], sink.ehlos
    finally:
        sink.close()


def test_helo_name_localhost_is_refused_with_its_line(tmp_path):
    t = Tern(tmp_path, helo_name="localhost")
    r = subprocess.run([TERN_BIN, "-c", str(t.conf), "check-config"], capture_output=True, timeout=30)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    line = next(i for i, l in enumerate(t.conf.read_text().splitlines(), 1) if l.startswith("helo_name"))
    assert f":{line}:" in err and "EHLO localhost" in err, err
