"""CHUNKING (RFC 3030) end to end: BDAT into tern over a raw socket (Python's
smtplib and swaks have no BDAT), BDAT out of tern to a sink that offers
CHUNKING, DATA to hops that do not (a Python sink and Postfix's smtp-sink),
and EDNS(0) answers a DNS server mangles (issue 15 parts 4 and 6a)."""

import socket
import socketserver
import struct
import subprocess
import threading
import time

import pytest

from harness import FakeDns, Sink, free_port, wait_for, wait_port


# --- a raw BDAT client --------------------------------------------------------------


class Raw:
    """A plain socket speaking SMTP line by line, for what smtplib cannot say."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self):
        """One (possibly multi-line) reply: (code, [lines])."""
        lines = []
        while True:
            line = self.f.readline()
            assert line, "connection closed"
            lines.append(line.decode(errors="replace").rstrip("\r\n"))
            if line[3:4] == b" ":
                return int(line[:3]), lines

    def replies(self, n):
        return [self.reply() for _ in range(n)]

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        self.f.close()
        self.sock.close()


def bdat(chunk, last=False):
    return b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk


def content_after_received(stored):
    """What follows tern's own header fields in a maildir file (LF lines):
    the Received: field ends with the date's zone."""
    return stored[stored.index(b"+0000\n") + len(b"+0000\n"):]


ENVELOPE = b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<joe@localhost>\r\n"

# Content DATA would treat specially: a lone dot line, leading dots, a
# QUIT line, 8-bit octets; cut inside a CRLF between the chunks.
MESSAGE = (b"From: a@remote.test\r\nTo: joe@localhost\r\nSubject: chunked\r\n\r\n"
           b".leading dot\r\n.\r\nQUIT\r\n..two dots\r\nUTF-8 \xc3\xa9\r\n" + b"x" * 900 + b"\r\nend\r\n")


def test_ehlo_offers_chunking_but_not_binarymime(tern):
    c = Raw(tern.port)
    c.send(b"EHLO client.test\r\n")
    code, lines = c.reply()
    assert code == 250
    exts = [l[4:] for l in lines]
    assert "CHUNKING" in exts and "PIPELINING" in exts, lines
    assert "BINARYMIME" not in exts
    c.close()


def test_pipelined_bdat_is_stored_byte_exact(tern):
    cut1 = MESSAGE.index(b"\r\n.\r\n") + 1  # between CR and LF
    cut2 = MESSAGE.index(b"UTF-8") + 7  # inside the 2-octet character
    chunks = [MESSAGE[:cut1], MESSAGE[cut1:cut2], MESSAGE[cut2:]]
    c = Raw(tern.port)
    # Everything in one write: commands, chunks and a NOOP after the last.
    c.send(ENVELOPE + bdat(chunks[0]) + bdat(chunks[1]) + bdat(chunks[2], last=True) + b"NOOP\r\nQUIT\r\n")
    got = c.replies(8)
    codes = [r[0] for r in got]
    assert codes == [250, 250, 250, 250, 250, 250, 250, 221], got
    assert got[3][1] == [f"250 2.0.0 Ok: {len(chunks[0])} octets received"]
    assert "queued as" in got[5][1][0]
    c.close()
    msgs = wait_for(lambda: tern.maildir("joe"), what="maildir delivery")
    assert len(msgs) == 1
    m = msgs[0]
    assert m.startswith(b"Return-Path: <a@remote.test>\nDelivered-To: joe@localhost\nReceived: from client.test ([127.0.0.1])\n\tby mx.test (tern) with ESMTP id ")
    # Mailboxes hold LF lines (the spool CRLF, as for DATA).
    assert content_after_received(m) == MESSAGE.replace(b"\r\n", b"\n")
    wait_for(lambda: "status=sent" in tern.log_text(), what="delivery logged")
    assert "from=<a@remote.test> size=" in tern.log_text()


def test_chunk_trickled_across_many_reads_then_a_command(tern):
    c = Raw(tern.port)
    c.send(ENVELOPE)
    assert [r[0] for r in c.replies(3)] == [250, 250, 250]
    c.send(b"BDAT %d LAST\r\n" % len(MESSAGE))
    for i in range(0, len(MESSAGE), 97):
        c.send(MESSAGE[i:i + 97])
        time.sleep(0.002)
    c.send(b"NOOP\r\n")
    code, lines = c.reply()
    assert code == 250 and "queued as" in lines[0], lines
    assert c.reply() == (250, ["250 2.0.0 Ok"])
    c.close()
    m = wait_for(lambda: tern.maildir("joe"), what="maildir delivery")[0]
    assert content_after_received(m) == MESSAGE.replace(b"\r\n", b"\n")


def test_bare_line_ends_and_unterminated_last_line_are_stored_as_data_would(tern):
    c = Raw(tern.port)
    c.send(ENVELOPE + bdat(b"Subject: lf\n\nbare\nlf\rcr\r") + bdat(b"\nno final newline", last=True) + b"QUIT\r\n")
    assert [r[0] for r in c.replies(6)] == [250, 250, 250, 250, 250, 221]
    c.close()
    m = wait_for(lambda: tern.maildir("joe"), what="maildir delivery")[0]
    assert content_after_received(m) == b"Subject: lf\n\nbare\nlf\ncr\nno final newline\n"


def test_bdat_zero_last(tern):
    c = Raw(tern.port)
    c.send(ENVELOPE + bdat(b"Subject: z\r\n\r\nbody\r\n") + b"BDAT 0 LAST\r\nQUIT\r\n")
    assert [r[0] for r in c.replies(6)] == [250, 250, 250, 250, 250, 221]
    m = wait_for(lambda: tern.maildir("joe"), what="maildir delivery")[0]
    assert content_after_received(m) == b"Subject: z\n\nbody\n"


def test_oversize_chunk_gets_552_and_the_session_stays_in_step(tern_factory):
    t = tern_factory(max_message_size=2000).start()
    c = Raw(t.port)
    big = b"QUIT\r\n" + b"y" * 994 + b"\r\n"
    c.send(ENVELOPE + bdat(big * 1) + bdat(big * 2) + b"NOOP\r\n" + bdat(b"late", last=True))
    got = c.replies(7)
    assert [r[0] for r in got] == [250, 250, 250, 250, 552, 250, 503], got
    assert got[4][1] == ["552 5.3.4 Error: message exceeds fixed maximum message size"]
    # A new transaction on the same connection works (DATA this time).
    c.send(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<joe@localhost>\r\nDATA\r\n")
    assert [r[0] for r in c.replies(3)] == [250, 250, 354]
    c.send(b"Subject: small\r\n\r\nok\r\n.\r\nQUIT\r\n")
    assert [r[0] for r in c.replies(2)] == [250, 221]
    msgs = wait_for(lambda: t.maildir("joe"), what="the second message")
    time.sleep(0.3)
    assert len(t.maildir("joe")) == 1
    assert msgs[0].endswith(b"Subject: small\n\nok\n")
    assert not t.queued()


def test_bdat_without_transaction_is_503_and_its_chunk_is_not_read_as_commands(tern):
    c = Raw(tern.port)
    c.send(b"EHLO client.test\r\n" + bdat(b"QUIT\r\n", last=True) + b"MAIL FROM:<a@remote.test>\r\n"
           + bdat(b"RSET\r\nQUIT\r\n") + b"NOOP\r\n")
    got = c.replies(5)
    assert [r[0] for r in got] == [250, 503, 250, 503, 250], got
    assert got[1][1] == ["503 5.5.1 Error: need MAIL command"]
    assert got[3][1] == ["503 5.5.1 Error: need RCPT command"]
    c.send(b"QUIT\r\n")
    assert c.reply()[0] == 221


def test_data_after_bdat_is_503_and_rset_discards_the_chunks(tern):
    c = Raw(tern.port)
    c.send(ENVELOPE + bdat(b"Subject: gone\r\n") + b"DATA\r\nRSET\r\n" + bdat(b"x\r\n", last=True) + b"QUIT\r\n")
    got = c.replies(8)
    assert [r[0] for r in got] == [250, 250, 250, 250, 503, 250, 503, 221], got
    assert got[4][1] == ["503 5.5.1 Error: DATA not allowed after BDAT"]
    time.sleep(0.5)
    assert tern.maildir("joe") == []
    assert not tern.queued(), "the discarded message left nothing in the spool"


def test_client_gone_between_chunks_leaves_nothing(tern):
    c = Raw(tern.port)
    c.send(ENVELOPE + bdat(b"Subject: half\r\n\r\n"))
    assert [r[0] for r in c.replies(4)] == [250, 250, 250, 250]
    # The spool file is open between the chunks.
    assert len(list((tern.spool / "tmp").iterdir())) == 1
    c.close()
    wait_for(lambda: not list((tern.spool / "tmp").iterdir()), what="the unfinished file removed")
    assert not tern.queued()


def test_sendmail_bs_takes_bdat(tern):
    """`sendmail -bs` runs the same session on stdin: BDAT works there too,
    including a message ended by `BDAT 0 LAST` (the Received: field kept)."""
    dialog = (b"EHLO script\r\nMAIL FROM:<bs@mx.test>\r\nRCPT TO:<bsuser@localhost>\r\n"
              + bdat(b"Subject: bs\r\n\r\n.one\r\n") + b"BDAT 0 LAST\r\n"
              + b"MAIL FROM:<bs@mx.test>\r\nRCPT TO:<bsuser@localhost>\r\nBDAT 0 LAST\r\nQUIT\r\n")
    r = subprocess.run([tern_bin(), "-c", str(tern.conf), "sendmail", "-bs"], input=dialog,
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert out.count("queued as") == 2 and "354" not in out, out
    msgs = wait_for(lambda: tern.maildir("bsuser") if len(tern.maildir("bsuser")) == 2 else None,
                    what="two -bs messages")
    # The injection's Received: field, then the session's, then the content.
    bodies = sorted(m[m.rindex(b"+0000\n") + 6:] for m in msgs)
    assert bodies == [b"", b"Subject: bs\n\n.one\n"], msgs
    assert all(b"\nReceived: from script ([127.0.0.1])\n" in m for m in msgs), msgs


def tern_bin():
    from harness import TERN_BIN

    return TERN_BIN


# --- relaying: BDAT out when the next hop offers CHUNKING, else DATA ----------------


class ChunkingSink:
    """A loopback SMTP server that offers CHUNKING (and PIPELINING unless
    told not to) and records each message with the commands that carried it."""

    def __init__(self, chunking=True, pipelining=True):
        self.chunking = chunking
        self.pipelining = pipelining
        self.messages = []  # dicts: rcpts, data, via ("BDAT"/"DATA"), chunks [(n, last)]
        self.commands = []
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                sink._session(self.rfile, self.wfile)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _session(self, rfile, wfile):
        def send(line):
            wfile.write(line.encode() + b"\r\n")
            wfile.flush()

        send("220 chunks.test ESMTP")
        txn = None
        while True:
            line = rfile.readline()
            if not line:
                return
            cmd = line.decode(errors="replace").rstrip("\r\n")
            self.commands.append(cmd)
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "EHLO":
                exts = ["chunks.test", "8BITMIME", "SIZE 100000000"]
                exts += ["PIPELINING"] if self.pipelining else []
                exts += ["CHUNKING"] if self.chunking else []
                for i, e in enumerate(exts):
                    send(("250 " if i == len(exts) - 1 else "250-") + e)
            elif verb == "MAIL":
                txn = {"rcpts": [], "data": b"", "via": None, "chunks": []}
                send("250 2.1.0 ok")
            elif verb == "RCPT":
                txn["rcpts"].append(cmd[8:].split(">")[0].lstrip("<"))
                send("250 2.1.5 ok")
            elif verb == "BDAT" and self.chunking:
                parts = cmd.split()
                n, last = int(parts[1]), len(parts) > 2 and parts[2].upper() == "LAST"
                data = rfile.read(n)
                if txn is None:
                    send("503 5.5.1 no transaction")
                    continue
                txn["data"] += data
                txn["via"] = "BDAT"
                txn["chunks"].append((n, last))
                if last:
                    self.messages.append(txn)
                    txn = None
                    send("250 2.0.0 queued")
                else:
                    send(f"250 2.0.0 {n} octets")
            elif verb == "DATA":
                send("354 go ahead")
                data = b""
                while True:
                    l = rfile.readline()
                    if not l or l == b".\r\n":
                        break
                    data += l[1:] if l.startswith(b"..") else l
                txn["data"], txn["via"] = data, "DATA"
                self.messages.append(txn)
                txn = None
                send("250 2.0.0 queued")
            elif verb == "RSET":
                txn = None
                send("250 ok")
            elif verb == "QUIT":
                send("221 bye")
                return
            else:
                send("502 5.5.2 not implemented")


def send_via_smtplib(t, body, rcpts=("x@far.test",)):
    import smtplib

    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as c:
        c.sendmail("a@lan.test", list(rcpts), body)


def relayed_content(data):
    """The relayed message without the Received: field tern added (CRLF)."""
    return data[data.index(b"+0000\r\n") + len(b"+0000\r\n"):]


BIG = (b"Subject: relayed in chunks\r\n\r\n.dot line\r\n..two\r\n.\r\n"
       + b"".join(b".line %05d of a long body\r\n" % i for i in range(3000)))


def relay_big_through(tern_factory, sink):
    """Relays BIG through a tern whose smarthost is `sink`; the message the
    sink got, its content checked byte for byte."""
    try:
        t = tern_factory(smarthost=f"127.0.0.1:{sink.port}", smarthost_tls="none").start()
        send_via_smtplib(t, BIG)
        wait_for(lambda: sink.messages, what="relayed message")
        m = sink.messages[0]
        assert relayed_content(m["data"]) == BIG
        wait_for(lambda: not t.queued(), what="queue empty")
        return m
    finally:
        sink.close()


@pytest.mark.parametrize("pipelining", [True, False])
def test_relay_sends_bdat_to_a_chunking_hop_byte_exact(tern_factory, pipelining):
    sink = ChunkingSink(pipelining=pipelining)
    m = relay_big_through(tern_factory, sink)
    assert m["via"] == "BDAT"
    assert len(m["chunks"]) >= 5, m["chunks"]
    assert all(not last for _, last in m["chunks"][:-1]) and m["chunks"][-1][1]
    assert not any(c == "DATA" for c in sink.commands)


def test_relay_uses_data_when_the_hop_offers_no_chunking(tern_factory):
    sink = ChunkingSink(chunking=False)
    m = relay_big_through(tern_factory, sink)
    assert m["via"] == "DATA"
    assert not any(c.upper().startswith("BDAT") for c in sink.commands)


def test_bdat_in_and_bdat_out_through_two_terns(tern_factory):
    """tern → tern: a client's BDAT into the first, which relays with BDAT
    to the second (far.test is local there); the maildir holds the message."""
    last = tern_factory(local_domains="localhost, mx.test, far.test").start()
    first = tern_factory(smarthost=f"127.0.0.1:{last.port}", smarthost_tls="none").start()
    body = BIG.replace(b"Subject: relayed in chunks", b"To: joe@far.test\r\nSubject: two terns")
    c = Raw(first.port)
    c.send(b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<joe@far.test>\r\n" + bdat(body, last=True) + b"QUIT\r\n")
    assert [r[0] for r in c.replies(5)] == [250, 250, 250, 250, 221]
    m = wait_for(lambda: last.maildir("joe"), what="delivery through two terns")[0]
    assert m.endswith(body.replace(b"\r\n", b"\n"))
    assert m.count(b"Received: from ") == 2
    log = first.log_text()
    assert "smtp-client: > BDAT 16384\n" in log and " LAST\n" in log
    assert "smtp-client: > DATA" not in log


def test_relay_to_postfix_smtp_sink_uses_data(tern_factory, tmp_path):
    """Postfix's smtp-sink (3.7) offers no CHUNKING: tern sends DATA, and the
    dumped message carries the body exactly (dot-stuffing undone)."""
    port = free_port()
    dump = tmp_path / "sink"
    dump.mkdir()
    proc = subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "root", "-d", str(dump / "%M."), f"127.0.0.1:{port}", "10"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        t = tern_factory(smarthost=f"127.0.0.1:{port}", smarthost_tls="none").start()
        send_via_smtplib(t, BIG)
        wait_for(lambda: "status=sent" in t.log_text(), what="sent to smtp-sink")
        files = wait_for(lambda: list(dump.iterdir()), what="smtp-sink dump file")
        data = files[0].read_bytes()
        # The dump holds the message in LF lines after X- fields and its own
        # Received:, then one empty line that ends the dump record.
        norm = data.replace(b"\r\n", b"\n")
        assert norm.endswith(b"+0000\n" + BIG.replace(b"\r\n", b"\n") + b"\n"), norm[-300:]
    finally:
        proc.terminate()
        proc.wait()


# --- EDNS(0): a DNS server that mangles answers to queries with OPT -----------


class MangledEdnsDns(FakeDns):
    """Answers a query carrying an OPT record with a reply that announces an
    answer it does not hold (as broken middleboxes do to EDNS answers);
    plain queries are answered properly."""

    with_opt = 0

    def _answer(self, q):
        if struct.unpack(">H", q[10:12])[0] > 0:
            self.with_opt += 1
            good = super()._answer(q[:12 - 2] + b"\0\0" + q[12:])
            # Same header and question, one answer announced, none there.
            qid, flags = struct.unpack(">HH", good[:4])
            end = 12 + good[12:].index(b"\0") + 5
            return struct.pack(">HHHHHH", qid, flags & ~0xF, 1, 1, 0, 0) + good[12:end]
        return super()._answer(q)


def test_mx_delivery_through_a_dns_server_that_mangles_edns_answers(tern_factory):
    dns = MangledEdnsDns({("far.test", "MX"): [(10, "mx.far.test")], ("mx.far.test", "A"): ["127.0.0.1"]})
    sink = Sink()
    try:
        t = tern_factory(dns_servers=dns.addr, mx_port=sink.port).start()
        send_via_smtplib(t, b"Subject: edns mangled\r\n\r\nvia plain DNS\r\n", rcpts=["u@far.test"])
        wait_for(lambda: sink.messages, what="MX delivery after the EDNS fallback")
        assert dns.with_opt == 1, "the first query carried OPT; the server was then remembered"
        assert "malformed answer" in t.log_text() and "retrying without it" in t.log_text()
    finally:
        dns.close()
        sink.close()
