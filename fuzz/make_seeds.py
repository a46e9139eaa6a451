#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/NAME/ (checked in; rerun after
changing a driver's input layout in src/fuzz_targets/).

Each seed is a small realistic input laid out as the driver reads it:
parameter bytes first, then the byte stream.
"""

import base64
import hashlib
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def b64(b):
    return base64.b64encode(b).decode()


# --- SMTP command lines and addresses ---------------------------------------

for i, line in enumerate([
    "EHLO client.example",
    "HELO [192.0.2.1]",
    "MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME",
    "mail from: <>",
    'RCPT TO:<"john doe"@x.example>',
    "RCPT TO:<Postmaster>",
    "MAIL FROM:<@a.example,@b.example:joe@c.example>",
    "RCPT TO:<a@[IPv6:2001:db8::1]>",
    "AUTH PLAIN " + b64(b"\0joe\0secret"),
    "STARTTLS",
    "DATA",
    "VRFY root",
]):
    write("smtp_command", f"seed-{i:02}", line)

for i, path in enumerate([
    "<User@Example.COM>",
    '<"a@b c\\"d"@[192.0.2.7]>',
    "joe@c.example",
    "<@a.example,@b.example:x@y.example>",
    "<>",
    "<user%other.example@local.example>",
    '"quoted"@x.example',
]):
    write("smtp_address", f"seed-{i:02}", path)

# --- SMTP server sessions ------------------------------------------------------
# mode: bits 0-1 listener (0 relay, 1 submission, 2 smtps), 4 relay allowed,
# 8 TLS available, 16 AUTH available, 32 plaintext AUTH, 64 refuse every
# second DATA, 128 fail every second commit.
# limits: bit 0 tiny size limit, bits 1-2 max recipients - 1, bits 3-5
# max errors - 3. Then a count byte, control bytes (chunk length - 1 in the
# low 5 bits, 0x1f = the rest; action in the high 3 bits).


def server(name, mode, limits, controls, stream):
    write("smtp_server", name,
          bytes([mode, limits, len(controls)]) + bytes(controls) + stream.encode())


TXN = ("EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\n"
       "RCPT TO:<joe@local.test>\r\nRCPT TO:<list@local.test>\r\nDATA\r\n"
       "Subject: hi\r\n\r\nbody\r\n..dot\r\n.\r\nQUIT\r\n")
server("relay-transaction", 0, 6, [], TXN)
server("relay-chunked", 4, 6, [3, 7, 0, 12, 0x1f], TXN)
server("relay-denied-then-allowed", 0, 6, [],
       "HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@remote.test>\r\nRCPT TO:<Postmaster>\r\n"
       "RCPT TO:<root+tag@mx.local.test>\r\nDATA\r\nReceived: a\r\nReceived: b\r\n"
       "Received: c\r\n\r\nloop\r\n.\r\nRSET\r\nNOOP\r\nVRFY x\r\nHELP\r\nQUIT\r\n")
server("submission-auth-plain", 1 | 16 | 32, 6, [],
       "EHLO laptop\r\nMAIL FROM:<joe@local.test>\r\nAUTH PLAIN " + b64(b"\0joe\0secret") +
       "\r\nMAIL FROM:<joe@local.test> BODY=8BITMIME\r\nRCPT TO:<far@remote.test>\r\n"
       "DATA\r\nFrom: joe\r\nSubject: no date\r\n\r\nhello\r\n.\r\nQUIT\r\n")
server("starttls-auth-login", 8 | 16, 6, [0x0f, 0x1f],
       "EHLO c\r\nAUTH LOGIN\r\nSTARTTLS\r\nNOOP\r\nEHLO c\r\nAUTH LOGIN\r\n" +
       b64(b"joe") + "\r\n" + b64(b"secret") + "\r\nMAIL FROM:<a@b.test>\r\n"
       "RCPT TO:<x@remote.test>\r\nDATA\r\nDate: x\r\nMessage-ID: <1@x>\r\n\r\n.\r\n")
server("smtps-auth-failures", 2 | 16, 0x38, [0x1f | 0x80],
       "EHLO c\r\nAUTH PLAIN " + b64(b"\0joe\0wrong") + "\r\nAUTH PLAIN\r\n" +
       b64(b"\0joe\0bad") + "\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN " + b64(b"\0blocked\0x") +
       "\r\nAUTH PLAIN =\r\nMAIL FROM:<a@b.test>\r\n")
server("smuggling", 4, 7, [5, 0x80 | 9, 0x1f],
       "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<joe@local.test>\r\nDATA\r\n"
       "a\n.\nMAIL FROM:<evil@x>\r\n\r.\rb\r\n.\n\r\n.\r\nQUIT\r\n")
server("bdat-pipelined", 4, 6, [],
       "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<joe@local.test>\r\n"
       "BDAT 14\r\nSubject: s\r\n\r\nBDAT 9 LAST\r\n.\r\nQUIT\r\nBDAT 3\r\nabcDATA\r\nRSET\r\n"
       "MAIL FROM:<a@b.test>\r\nBDAT 5\r\nNOOP\n\r\nBDAT 0 LAST\r\nQUIT\r\n")
server("bdat-oversize", 1 | 4, 1, [0x07, 0x1f],
       "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<joe@local.test>\r\n"
       "BDAT 40\r\n" + "x" * 40 + "BDAT 40 LAST\r\n" + "y" * 40 + "NOOP\r\n")
server("bdat-framed", 0, 0x40 | 6, [0x03, 0x05, 0xc2, 0x1f],
       "Subject: framed\r\n\r\n.dot\r\nbare\nlf\rcr\r\n.\r\nQUIT\r\nend")
server("bdat-framed-spool-trouble", 64 | 128, 0x40 | 1, [0x02, 0xc1, 0x03],
       "Received: a\r\n\r\n" + "z" * 80)
server("errors-and-long-lines", 0, 0, [],
       "FOO\r\nMAIL FROM:<a@b>\r\n" + "X" * 1200 + "\r\nEHLO c\r\n"
       "MAIL FROM:<bad address@x>\r\nRCPT TO:<x@y>\r\nDATA\r\nBDAT 1\r\n")
server("oversize-and-timeout", 1 | 16 | 32 | 64 | 128, 1, [0x1f | 0xa0],
       "EHLO c\r\nAUTH PLAIN " + b64(b"\0joe\0secret") + "\r\n"
       "MAIL FROM:<joe@local.test> SIZE=100\r\nMAIL FROM:<joe@local.test>\r\n"
       "RCPT TO:<a@remote.test>\r\nDATA\r\nDATA\r\n" + "line\r\n" * 20 + ".\r\n")

# --- DATA decoder --------------------------------------------------------------
# Bytes: max size choice, cut count, cuts, then the stream.


def data(name, size_choice, cuts, stream):
    if isinstance(stream, str):
        stream = stream.encode()
    write("smtp_data", name, bytes([size_choice, len(cuts)]) + bytes(cuts) + stream)


data("message", 0, [40, 90], "Received: from a\r\nDate: now\r\nMessage-ID: <1@x>\r\n"
     "From: a@b\r\nSubject: x\r\n\r\nhello\r\n..leading dot\r\n.\r\nQUIT\r\n")
data("smuggling", 0, [3, 7, 200], "a\n.\nb\r\n.\nc\n.\r\nd\r.\re\r.\r\nf\r\n.\rg\r\n.\r\n")
data("empty", 0, [], ".\r\n")
data("long-line-8bit", 4, [128], "Subject: \xe9t\xe9\r\n\r\n" + "x" * 1001 + "\r\n.\r\n")
data("no-end", 3, [1, 2], "header without colon\r\nbody\r\n.\r")
data("continuation", 0, [], "X-A: 1\r\n continued\r\n\tmore\r\nno-colon-line-here\r\n\r\n.\r\n")

# --- SMTP client -----------------------------------------------------------------
# mode: bits 0-1 TLS policy (never, if offered, required), 4 implicit TLS,
# 8 credentials, high nibble body chunk size. shape: bits 0-1 recipients - 1,
# 2-3 sender kind, 16 huge message, 32 8-bit, 64 SMTPUTF8; its high nibble
# also picks the body. Then a count byte and control bytes.


def client(name, mode, shape, controls, replies):
    write("smtp_client", name,
          bytes([mode, shape, len(controls)]) + bytes(controls) + replies.encode())


EHLO_PIPE = "250-mx.remote.test\r\n250-PIPELINING\r\n250-SIZE 10000000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
client("pipelined", 0x20, 0x01, [],
       "220 mx.remote.test ESMTP\r\n" + EHLO_PIPE +
       "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n354 go\r\n"
       "250 2.0.0 queued\r\n221 bye\r\n")
client("lockstep", 0x10, 0x03, [0],
       "220 mx\r\n250-mx\r\n250 SIZE 1000\r\n250 ok\r\n250 ok\r\n451 later\r\n250 ok\r\n"
       "354 go\r\n554 5.7.1 rejected\r\n250 ok\r\n221 bye\r\n")
client("starttls-auth-plain", 0x01 | 0x08, 0x00, [],
       "220 mx\r\n250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n220 2.0.0 go ahead\r\n"
       "250-mx\r\n250-PIPELINING\r\n250 AUTH=PLAIN LOGIN\r\n235 2.7.0 ok\r\n"
       "250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n")
client("auth-login-lockstep", 0x04 | 0x08, 0x40 | 0x20, [],
       "220 mx\r\n250-mx\r\n250 AUTH LOGIN\r\n334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n"
       "235 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n")
client("chunking-pipelined", 0x20, 0x01, [],
       "220 mx.remote.test ESMTP\r\n250-mx.remote.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
       "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n"
       "250 2.0.0 queued\r\n221 bye\r\n")
client("chunking-lockstep-8bit-refused", 0x10, 0x20 | 0x03, [0],
       "220 mx\r\n250-mx\r\n250 CHUNKING\r\n250 ok\r\n250 ok\r\n250 ok\r\n"
       "552 5.3.4 too big\r\n250 ok\r\n250 ok\r\n250 ok\r\n250 queued\r\n221 bye\r\n")
client("required-tls-missing", 0x02, 0, [], "220 mx\r\n250 mx\r\n221 bye\r\n")
client("failures", 0, 0x02, [0x10, 0x80, 0x01, 0xa0, 0xc0],
       "220-mx\r\n220 still greeting\r\n500 no EHLO\r\n250 helo ok\r\n250 ok\r\n"
       "250-ok\r\n251 changed\r\n421 4.3.2 shutting down\r\n")
client("null-sender-discarded-data", 0, 0x08 | 0x01, [],
       "220 mx\r\n" + EHLO_PIPE + "250 ok\r\n550 no\r\n550 no\r\n354 bogus\r\n503 no rcpt\r\n250 reset\r\n")

for i, replies in enumerate([
    "250-mx.remote.test\r\n250-PIPELINING\r\n250-SIZE 0\r\n250-AUTH=LOGIN PLAIN\r\n250 STARTTLS\r\n",
    "250 mx\r\n",
    "250-mx\n250-SIZE 999999999999999999999\r\n250 AUTH\r\n",
    "250-2.1.5 ok\r\n250 5.999.999 x\r\n",
    "220 again\r\n",
]):
    write("smtp_client_reply", f"seed-{i:02}", bytes([i * 40]) + replies.encode())

# --- DNS ---------------------------------------------------------------------------


def name_wire(name):
    out = b""
    for label in name.split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def header(id_, flags, counts):
    return struct.pack(">HH4H", id_, flags, *counts)


def rr(owner, rtype, ttl, rdata):
    return owner + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata


Q = name_wire("example.com") + struct.pack(">HH", 15, 1)
PTR = b"\xc0\x0c"  # example.com at offset 12
mx1 = rr(PTR, 15, 300, b"\x00\x0a" + b"\x03mx1" + PTR)
mx2 = rr(PTR, 15, 300, b"\x00\x14" + name_wire("mx2.example.net"))
glue = rr(b"\x03mx1" + PTR, 1, 300, bytes([192, 0, 2, 1]))
write("dns_wire", "mx-compressed", header(0x1234, 0x8180, [1, 2, 0, 1]) + Q + mx1 + mx2 + glue)
write("dns_wire", "nxdomain-soa",
      header(1, 0x8183, [1, 0, 1, 0]) + Q +
      rr(PTR, 6, 60, b"\0\0" + b"\0" * 16 + struct.pack(">I", 30)))
write("dns_wire", "cname-aaaa",
      header(2, 0x8180, [1, 2, 0, 0]) + name_wire("www.example.com") + struct.pack(">HH", 28, 1) +
      rr(b"\xc0\x0c", 5, 30, name_wire("host.example.net")) +
      rr(name_wire("host.example.net"), 28, 30, bytes(range(16))))
write("dns_wire", "truncated", header(3, 0x8380, [1, 0, 0, 0]) + Q)
write("dns_wire", "null-mx-escapes",
      header(4, 0x8180, [1, 2, 0, 0]) + Q + rr(PTR, 15, 300, b"\0\0\0") +
      rr(b"\x05a.b\\c" + PTR, 16, 1, b"\x03txt"))
write("dns_wire", "name-text", "Mail.Example.COM.")

# Resolver: mode, seed (4 bytes), first lookup choice, then operations:
# op%8 0-1 spliced answer, 2-3 structured answer, 4 raw, 5 transport error,
# 6 timeout, 7 new lookup. A structured answer reads: exchange index,
# counts (answers%6, authority%3, additional%4), each record (owner index,
# kind, ttl, data bytes), rcode choice, truncation byte, sender byte.


def rec(owner, kind, ttl, *data):
    return bytes([owner, kind, ttl]) + bytes(data)


A, AAAA, MX, CNAME, SOA, NULLMX = 0, 1, 2, 3, 4, 5
MX1, MX2, ALIAS = 1 << 3, 2 << 3, 3 << 3


def structured(index, answers, authority, additional, rcode=0, tc=1):
    out = bytes([2, index, len(answers), len(authority), len(additional)])
    for r in answers + authority + additional:
        out += r
    return out + bytes([rcode, tc, 0])


resolver_mx = (bytes([0x15]) + b"\0\0\0\x07" + bytes([0]) +
               structured(0, [rec(0, MX | MX1, 5, 10), rec(0, MX | MX2, 5, 20)], [],
                          [rec(1, A, 5, 1), rec(1, AAAA, 5, 0, 1)]) +
               structured(0, [rec(2, A, 5, 2)], [], []) +
               structured(0, [], [rec(0, SOA, 5, 0, 0, 0, 60)], []) +
               bytes([6]))
write("dns_resolver", "mx-glue", resolver_mx)
write("dns_resolver", "cname-chain",
      bytes([0x01]) + b"\0\0\0\x01" + bytes([0]) +
      structured(0, [rec(0, CNAME | ALIAS, 5), rec(3, CNAME | (4 << 3), 5)], [], []) +
      structured(0, [rec(0, MX | MX1, 5, 1)], [], []) +
      bytes([6, 6, 6]))
write("dns_resolver", "null-mx-and-host",
      bytes([0x02]) + b"\0\0\0\x02" + bytes([0]) +
      structured(0, [rec(0, NULLMX, 5)], [], []) +
      bytes([7, 0x40 | 1]) + structured(0, [], [], [], rcode=3) + bytes([7, 4, 7, 5]))
write("dns_resolver", "truncated-then-tcp",
      bytes([0x06]) + b"\0\0\1\0" + bytes([0]) +
      structured(0, [rec(0, MX | MX1, 5, 1)], [], [], tc=0) +
      bytes([0, 0, 0x81, 0x80, 1, 0, 0, 8]) + b"\xc0\x0c\x00\x0f\x00\x01\x00\x00" +
      bytes([5, 0, 6, 6]))
write("dns_resolver", "timeouts-servfail",
      bytes([0x3a]) + b"\0\0\0\x09" + bytes([0]) +
      bytes([0, 0, 0x81, 0x82, 0, 0, 0, 0, 0]) + bytes([6, 6, 5, 0, 6, 6, 6]))

# --- spool files ---------------------------------------------------------------------

ENV2 = ("tern-queue 2\narrival 1795000000\nsender a@b.example\n"
        "rcpt local joe joe+tag@localhost\n"
        "rcpt remote john+20doe example.com \"john+20doe\"@example.com\n"
        "rcpt refused unknown-user nosuch@mx.test\n"
        "client helo.example+20[192.0.2.1]\nbody 7bit\n\nSubject: x\r\n\r\nbody\r\n")
ENV1 = ("tern-queue 1\narrival 5\nsender a@b.example\nrcpt root postmaster@localhost\n"
        "rcpt x@y.example x@y.example\nclient h [127.0.0.1]\nbody 8bit\n\nbody")
write("spool_envelope", "format-2", ENV2)
write("spool_envelope", "format-1", ENV1)
write("spool_envelope", "bad-xtext", ENV2.replace("john+20doe example", "john+2 example"))
write("spool_envelope", "structured", bytes([0x83, 2, 3]) + b"joe" + bytes([0, 5]) + b"a@b.c" +
      bytes([3, 4]) + b"x y\"" + bytes([9]) + b"orig@x.yz" + b"\0\0\0\1" + bytes([1]) + b"s" +
      bytes([6]) + b"client" + b"content\r\n")

write("spool_state", "three", bytes([3]) + b"attempts 2\n0 sent 250 2.0.0 ok\n"
      b"1 deferred 451 4.4.2 timeout\n2 failed 550 5.1.1 no\n")
write("spool_state", "pending", bytes([1]) + b"attempts 0\n0 pending \n")
write("spool_state", "bad-index", bytes([2]) + b"attempts 1\n7 sent x\r\n")
# The current layout (tern-state 2): reasons field by field.
write("spool_state", "typed", bytes([5]) + b"tern-state 2\nattempts 3\nage 7200\n"
      b"0 sent mx.example[192.0.2.1]:25\n"
      b"1 deferred remote mx.example[192.0.2.1]:25 451 4.3.0 try later\n"
      b"2 failed dns - 550 5.1.2 domain x.test does not exist\n"
      b"3 deferred tls - 451 4.7.5 TLS with mx[192.0.2.1]:25 failed: certificate verify failed: unknown issuer\n"
      b"4 sent maildir+20/var/mail/joe\n")
write("spool_state", "typed-bad", bytes([2]) + b"tern-state 2\nattempts 1\n"
      b"0 failed dns mx 550 5.1.1 x\n1 deferred queue - 45 4.0.0 y\n")
write("spool_state", "old-said", bytes([2]) + b"attempts 1\nage 60\n"
      b"0 deferred mx[192.0.2.1]:25 said: 451 4.3.0 later\n1 failed 5.4.7 expired\n")

write("spool_drop", "plain", "tern-drop 1\nsender root@router.lan\nrcpt joe\n"
      "rcpt list@local.test\nrcpt far@remote.test\n\nSubject: x\n\nbody\n")
write("spool_drop", "null-sender", "tern-drop 1\nsender \nrcpt postmaster\n\n")
write("spool_drop", "quoted", 'tern-drop 1\nsender "a b"@x.test\nrcpt "c d"@mx.local.test\n'
      "rcpt bad\n\r\n.\r\n")
write("spool_drop", "bad-line", "tern-drop 1\nfrom x\nrcpt y\n\n")

# --- administrator's files -------------------------------------------------------------

with open(os.path.join(ROOT, "etc", "tern.conf"), "rb") as f:
    write("config", "tern.conf", f.read())
with open(os.path.join(ROOT, "etc", "tern.dev.conf"), "rb") as f:
    write("config", "tern.dev.conf", f.read())
write("config", "full",
      "\ufeffhostname = mx1.Example.NET\nlisten = 0.0.0.0:25, [::]:25\n"
      "submission_listen = 127.0.0.1:587\nsmtps_listen = [::1]:465\n"
      "local_domains = example.net., Router.lan\nrelay_networks = 192.168.1.0/24, "
      "::ffff:10.0.0.0/104, fd00::/8\nsmarthost = relay.example.com:587, [2001:db8::1], "
      "192.0.2.25\nsmarthost_tls = starttls\nsmarthost_user = u\n"
      "smarthost_password_file = /etc/pw\nretry_schedule = 5m, 30m, 2h, 1d\n"
      "max_queue_time = 5d\nmax_message_size = 10M\ntls_cert = /c\ntls_key = /k\n"
      "dns_servers = 127.0.0.1, [::1]:5353\ndns_timeout = 3s\nlog_level = debug\n"
      "hostname = dup\nbogus = 1\nmax_recipients = 0\n")
write("config", "resolv.conf", "# resolv.conf\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\n"
      "nameserver 2001:db8::53\nnameserver 198.51.100.1\noptions timeout:2 attempts:9 rotate\n"
      "search lan\n")

with open(os.path.join(ROOT, "etc", "aliases"), "rb") as f:
    write("aliases", "etc-aliases", f.read())
write("aliases", "tricky",
      "# comment\npostmaster: root\nroot: root, admin@example.com,\n  alice # continued\n"
      '"Quoted": <bob@local.test>, "x, y"@example.org\nloop1: loop2\nloop2: loop1\n'
      "self: self\ndeep1: deep2\ndeep2: deep3\ndeep3: alice\npipe: |/bin/sh\n"
      "file: /tmp/x\ninc: :include:/etc/list\nbad name: x\n: nothing\nempty:\n"
      "plus: joe+ext\nlocal: carol@LOCAL.TEST\nroot: dup\n")

salt = bytes(range(16))
dk = hashlib.pbkdf2_hmac("sha256", b"secret", salt, 4096, 32)
USER_LINE = f"joe:$pbkdf2-sha256$4096${b64(salt)}${b64(dk)}\n"
write("users", "users", "# tern passwd output\n" + USER_LINE +
      "ann: $pbkdf2-sha256$1$AAAA$AAAAAAAAAAAAAAAAAAAAAA==\n"
      "bad line\nx y:$pbkdf2-sha256$1$AA$AA\nzed:$md5$1$2$3\n"
      "joe:$pbkdf2-sha256$2000000$AAAA$AAAAAAAAAAAAAAAAAAAAAA==\n")
write("users", "constructed", bytes([2, 6]) + b"s3cret" + bytes(range(16)))

for i, s in enumerate([
    b"PLAIN " + b64(b"\0joe\0secret").encode(),
    b"LOGIN\n" + b64(b"joe").encode() + b"\n" + b64(b"secret").encode(),
    b"plain\n" + b64(b"joe\0joe\0secret").encode() + b"\nextra",
    b"LOGIN " + b64(b"joe").encode() + b"\n*",
    b"PLAIN =\nPLAIN AGpvZQ==\nCRAM-MD5",
    b"joe\0secret",
    b"QUJD\nQUI=\nQQ==\nQR==",
]):
    write("sasl", f"seed-{i:02}", s)

# --- 8bit -> 7bit downgrade -------------------------------------------------------
# Bytes: shape (0 raw, 1 non-MIME, 2 8bit part, 3 multipart), cut count, cuts;
# shapes 1-3: header count and length-prefixed X-Fuzz values; shape 3: part
# count; then the message (shape 0) or body text.


def mime(name, shape, cuts, fields, body, parts=None):
    if isinstance(body, str):
        body = body.encode()
    head = bytes([shape, len(cuts)]) + bytes(cuts)
    if shape:
        head += bytes([len(fields)])
        for f in fields:
            head += bytes([len(f)]) + f.encode()
        if shape == 3:
            head += bytes([parts])
    write("mime_downgrade", name, head + body)


mime("raw-multipart", 0, [30, 200], [],
     "Subject: t\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
     "pre\r\n--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
     "caf\xc3\xa9 = 100%\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\n\xc3\xa9t\xc3\xa9\r\n"
     "--b--\r\nepilogue\r\n".encode("latin-1"))
mime("raw-binary", 0, [], [], b"Content-Transfer-Encoding: binary\r\n\r\n\x00\xff\r\n")
mime("raw-8bit-header", 0, [5], [], "Subject: \xe9\r\n\r\nbody\r\n".encode("latin-1"))
mime("non-mime", 1, [10], ["a"], "Gr\xfc\xdfe\r\n" + "x" * 200 + "\xe9\r\n.\r\n--not a boundary\r\n")
mime("part", 2, [3, 90], [], "trailing space \r\ntab\t\r\n=3D\r\n" + "\xff" * 100 + "\r\n")
mime("multipart", 3, [50], ["x", "y"], "first \xe9\r\nsecond part line\r\nthird \xc3\xa9", parts=2)

# sender_rewrite: chunk-size byte, then the message.
def rewrite(name, chunk, message):
    if isinstance(message, str):
        message = message.encode("latin-1")
    write("sender_rewrite", name, bytes([chunk]) + message)


rewrite("cron", 0, "From: Cron Daemon <root>\r\nSender: root (x)\r\nTo: root\r\n\r\nFrom: root\r\n")
rewrite("folded-group", 6, "FROM: a@b.test,\r\n\t\"x, y\" <root@router.lan>,\r\n G: c@x.test;\r\n\r\nbody\r\n")
rewrite("odd", 2, "From: \"root <root>\r\nSender: (root\r\nFrom: <@r.test:root@router.lan>\n\nx")
rewrite("rules", 1, "# rules\nroot me@example.com\n@router.lan\n* x@y.test # c\nroot a@b.test\n")

# routes: the routes file, then optionally NUL and query lines "SENDER DOMAIN".
def route_seed(name, text, queries=()):
    data = text.encode("latin-1")
    if queries:
        data += b"\0" + "\n".join(queries).encode("latin-1")
    write("routes", name, data)


route_seed("example", """# routes
@example.com      smtp:mail.example.com:587 tls=starttls user=u password_file=/etc/tern/pw
.corp.example     smtp:10.0.0.5:25 tls=none          # subdomains of corp.example
from:@work.example smtp:smtp.work.example:465 tls=tls user=me@work.example password_file=/etc/tern/work
from:cron@router.lan mx
@lan.example      mx
@router.lan       local
*                 smtp:smtp.gmail.com:465 tls=tls user=me@gmail.com password_file=/etc/tern/gmail
""", ["cron@Router.LAN x.example", "me@work.example EXAMPLE.COM.", "a@b.test a.corp.example",
      "<> corp.example", "x@y.test router.lan"])
route_seed("errors", "\r\n@ bad\n* mx extra\n.x..y mx\nfrom:@[1.2.3.4] local\n"
           "@a.test smtp:h:99999\n@b.test smtp:[::1]:25 user=u\n# only a comment\n"
           "@c.test local tls=none\n@d.test smtp:h tls=tls tls=none\n   \n@e.test",
           ["u@a.test c.test"])
route_seed("oauth-webhook", "@a.test smtp:h:587 auth=xoauth2 user=u oauth_token_command=/bin/t\n"
           "from:\"x y\"@q.test webhook:https://ntfy.sh/t format=json\n"
           "@b.test webhook:ftp://x\n.sub.test smtp:[192.0.2.1] auth=login user=v password_file=/p\n",
           ["\"X Y\"@Q.test z.test", "v@q.test deep.er.sub.test."])

# mail_compose: flags (bits 0-1 attachments, 4 name, 8 subject, 16 Cc),
# name (two length bytes), subject (two length bytes), per attachment a file name
# (length byte) and contents (two length bytes); the rest is the body.
def mail_seed(name, flags, from_name, subject, attachments, body):
    enc = lambda s: s.encode("utf-8") if isinstance(s, str) else s
    data = bytes([flags]) + struct.pack(">H", len(enc(from_name))) + enc(from_name)
    data += struct.pack(">H", len(enc(subject))) + enc(subject)
    for fname, content in attachments:
        data += bytes([len(enc(fname))]) + enc(fname)
        data += struct.pack(">H", len(enc(content))) + enc(content)
    write("mail_compose", name, data + enc(body))


mail_seed("plain", 8, "", "disk /dev/sda: 3 reallocated sectors", [], "smartd says hi\n")
mail_seed("utf8-subject", 4 | 8 | 16, "Routeur Café", "Température élevée: 71 °C\nsecond line " + "x" * 90,
          [], "long " + "y" * 1200 + "\r\nnul \0 cr \r end")
mail_seed("attachments", 2 | 4 | 8, "Ops \"night\" team", "backup report",
          [("report.csv", "a,b\n1,2\n"), ("r\u00e9sum\u00e9 " + "n" * 60 + ".pdf", bytes(range(256)))],
          "see attached\n")
mail_seed("attachment-only", 1, "", "", [("empty.bin", b"")], "")

# oauth_json: two bytes of HTTP status, then the token endpoint's body.
def oauth_seed(name, status, body):
    write("oauth_json", name, struct.pack(">H", status) + body.encode("utf-8"))


oauth_seed("google-refresh", 200, '{\n  "access_token": "ya29.a0AfB_byC",\n  "expires_in": 3599,\n'
           '  "scope": "https://mail.google.com/",\n  "token_type": "Bearer"\n}')
oauth_seed("microsoft-rotate", 200, '{"token_type":"Bearer","scope":"https://outlook.office.com/SMTP.Send",'
           '"expires_in":4339,"ext_expires_in":4339,"access_token":"eyJ0.eyJh.sig","refresh_token":"0.AVYA-rt"}')
oauth_seed("invalid-grant", 400, '{"error":"invalid_grant","error_description":"AADSTS70000: bad\\r\\nTrace ID: 0",'
           '"error_codes":[70000],"x":{"y":[1,{"z":null}],"w":true},"esc":"\\u00e9\\ud83d\\ude00\\/"}')
oauth_seed("device-google", 200, '{"device_code":"4/4-GMMh","user_code":"GQVQ-JKEC",'
           '"verification_url":"https://www.google.com/device","expires_in":1800,"interval":5}')
oauth_seed("pending", 428, '{"error":"authorization_pending","device_code":"d","user_code":"u",'
           '"verification_uri":"https://x/","interval":"2","n":-1.5e+3}')

# --- HTTP client (http_response: mode byte, split byte, bytes) -----------------

HTTP_SEEDS = [
    ("content-length", 0, 7, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"),
    ("chunked", 0, 3, b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"5;e=1\r\nhello\r\n0\r\nT: x\r\n\r\n"),
    ("interim-then-close", 0, 11, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 404 Not Found\r\n\r\n{\"error\":1}"),
    ("bodiless", 0, 1, b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"),
    ("conflicting-length", 0, 2, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc"),
    ("chunked-raw", 1, 4, b"A\r\n0123456789\r\n1\nx\n0\n\n"),
    ("chunked-built", 2, 5, b"some body bytes \r\n with a CRLF"),
    ("url", 3, 0, b"https://[::1]:8443/topic?x=a%20b#frag"),
    ("notice", 4, 0, b"Subject: =?UTF-8?B?w6ljaGVj?= x\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
     b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
     b"caf=E9 =\r\nend\r\n--b--\r\n"),
]
for name, mode, split, data in HTTP_SEEDS:
    write("http_response", name, bytes([mode, split]) + data)
# dkim_canon: mode (bit 0: a From: of the signing domain in front; bit 1:
# 8-bit), the number of cuts, the cuts, then a message.
def dkim_seed(name, mode, cuts, message):
    write("dkim_canon", name, bytes([mode, len(cuts)] + cuts) + message)


dkim_seed("rfc6376-example", 1, [40, 90], b"A: X\r\nB : Y\t\r\n\tZ  \r\n\r\n C \r\nD \t E\r\n\r\n\r\n")
dkim_seed("8bit-folded", 3, [10, 11, 200], b"Subject: a\r\n  folded\t line\r\nContent-Type: text/plain; charset=utf-8\r\n"
          b"Content-Transfer-Encoding: 8bit\r\nMIME-Version: 1.0\r\n\r\nGr\xc3\xbc\xc3\x9fe \t\r\n\r\n \r\n")
dkim_seed("no-from", 0, [128], b"To: x@y\r\n\r\nbody\r\n")
dkim_seed("bare-cr-lf", 1, [1, 2, 3], b"X: 1\r\n\r\na\rb\nc \r\r\n\r")

if __name__ == "__main__":
    total = 0
    for t in sorted(os.listdir(CORPUS)):
        size = sum(os.path.getsize(os.path.join(CORPUS, t, f))
                   for f in os.listdir(os.path.join(CORPUS, t)))
        total += size
        print(f"{t}: {len(os.listdir(os.path.join(CORPUS, t)))} seeds, {size} bytes")
    print(f"total {total} bytes", file=sys.stderr)
