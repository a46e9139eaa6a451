# tern — see README.md. `make run` starts tern on the embedded dev config;
# `make test` runs every test (installing the Debian packages the interop
# tests need when run as root): unit tests, then the end-to-end suite
# against the debug binary and again against the release binary (where
# panic = "abort": a panic reachable from input kills the daemon there).

CARGO ?= cargo
PREFIX ?= /usr/local
DESTDIR ?=
PYTHON ?= python3
DEV_CONF := etc/tern.dev.conf
# Every program the e2e tests run, by Debian package: swaks (and
# libnet-ssleay-perl, only a Recommends of swaks, for its STARTTLS),
# postfix (smtp-sink, smtp-source), s-nail (a real sendmail caller),
# openssl (s_client, and genpkey for `tern dkim keygen`), faketime, strace,
# and Dovecot's LMTP server (dovecot-core, dovecot-lmtpd: the LMTP interop
# test starts its own instance). pytest runs them: Debian's python3-pytest
# when $(PYTHON) lacks it and we are root, else pip; likewise dkimpy and
# PyNaCl (python3-dkim, python3-nacl) for the DKIM tests.
TEST_PKGS := swaks libnet-ssleay-perl postfix s-nail openssl faketime strace dovecot-core dovecot-lmtpd

.PHONY: all build release run test test-deps unit e2e e2e-release torture check fmt clippy size bench bench-floor bench-callgrind bench-router bench-tls bench-allocs bench-bigqueue install clean cross cross-test fuzz fuzz-deps fuzz-build

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# Builds and runs tern in the foreground on loopback (127.0.0.1:2525),
# spool and mailboxes under ./run/ of the checkout.
run: build
	mkdir -p run/spool run/mail
	./target/debug/tern -c $(DEV_CONF)

test: test-deps unit e2e e2e-release

test-deps:
	@missing=""; \
	for p in $(TEST_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
	      || { echo "apt-get install$$missing failed"; exit 1; }; \
	  else \
	    echo "missing Debian packages:$$missing (run 'make test' as root, or apt-get install them)"; exit 1; \
	  fi; \
	fi
	@$(PYTHON) -c "import pytest" 2>/dev/null \
	  || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pytest >/dev/null \
	       && $(PYTHON) -c "import pytest" 2>/dev/null; } \
	  || $(PYTHON) -m pip install -q pytest \
	  || { echo "python package pytest is missing and could not be installed"; exit 1; }
	@# dkimpy verifies tern's DKIM signatures in tests/e2e/test_dkim.py (PyNaCl for Ed25519).
	@$(PYTHON) -c "import dkim, nacl" 2>/dev/null \
	  || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-dkim python3-nacl >/dev/null \
	       && $(PYTHON) -c "import dkim, nacl" 2>/dev/null; } \
	  || $(PYTHON) -m pip install -q dkimpy pynacl \
	  || { echo "python packages dkimpy and pynacl are missing and could not be installed"; exit 1; }

unit:
	$(CARGO) test --all-targets

e2e: build
	TERN_BIN=$(CURDIR)/target/debug/tern $(PYTHON) -m pytest -q tests/e2e

# The same suite against the release profile (panic = "abort", LTO).
e2e-release: release
	TERN_BIN=$(CURDIR)/target/release/tern $(PYTHON) -m pytest -q tests/e2e

# The full crash-point torture (tests/torture/crashpoints.py): the commit's
# syscall order, every crash point of every scenario under strace fault
# injection, and TORTURE_ROUNDS kill -9 rounds under load; prints a summary
# table and fails on any loss. `make test` runs a sample of it
# (tests/e2e/test_torture_fast.py). Needs strace (in TEST_PKGS).
TORTURE_ROUNDS ?= 100
torture: build test-deps
	TERN_BIN=$(CURDIR)/target/debug/tern $(PYTHON) tests/torture/crashpoints.py --rounds $(TORTURE_ROUNDS)

check: fmt clippy

fmt:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

size: release
	@ls -l target/release/tern | awk '{print "stripped release binary: " $$5 " bytes"}'

bench: release
	$(PYTHON) tests/bench/bench.py

# tern against the floor (tests/bench/floor.rs: the least work a durable
# MTA can do), accept only; see tests/bench/README.md.
bench-floor: release
	$(CARGO) build --release --example floor
	$(PYTHON) tests/bench/floor.py

# Instructions per message under callgrind (valgrind), from binaries built
# with the release profile plus debug info (not stripped), in a target
# dir of their own so target/release stays as it is.
CALLGRIND_TARGET := target/callgrind
bench-callgrind: release
	CARGO_PROFILE_RELEASE_DEBUG=1 CARGO_PROFILE_RELEASE_STRIP=none \
	  $(CARGO) build --release --target-dir $(CALLGRIND_TARGET) --bin tern --example floor
	$(PYTHON) tests/bench/callgrind.py --tern $(CALLGRIND_TARGET)/release/tern \
	  --floor $(CALLGRIND_TARGET)/release/examples/floor

# Issue 16's router-class workload (root; tests/bench/README.md): tern and
# Postfix side by side, each in a cgroup of 16 MiB and 10 % of one core:
# relay msg/s, 1,000 idle sessions, NOOP latency, OOM kills. ~10 minutes.
bench-router: release
	$(PYTHON) tests/bench/router_class.py

# TLS submission and TLS relay out, tern against Postfix (issue 16,
# workloads 2 and 3; tests/bench/README.md). Run as root for the Postfix
# reference; the script installs sasl2-bin and libsasl2-modules itself.
# TLS_BENCH_ARGS passes options (e.g. --quick, --reps 5).
TLS_BENCH_ARGS ?=
bench-tls: release
	$(CARGO) build --release --example smtp_load
	$(PYTHON) tests/bench/tls_bench.py $(TLS_BENCH_ARGS)

# Heap allocations per relayed message (valgrind's DHAT, on the release
# build with symbols: profile bench-dhat) and PSS/VmRSS at rest (release
# build). See tests/bench/README.md.
bench-allocs: release
	$(CARGO) build --profile bench-dhat
	$(PYTHON) tests/bench/allocs.py

# Issue 16, workload 4: 100,000 held messages (start, PSS, flush rate);
# ~15 minutes on a 2-core machine. BIGQUEUE_ARGS="-n 20000" for a quicker run.
bench-bigqueue: release
	$(PYTHON) tests/bench/bigqueue.py $(BIGQUEUE_ARGS)

install: release
	install -D -m 0755 target/release/tern $(DESTDIR)$(PREFIX)/sbin/tern
	ln -sf tern $(DESTDIR)$(PREFIX)/sbin/sendmail
	ln -sf tern $(DESTDIR)$(PREFIX)/sbin/mailq
	ln -sf tern $(DESTDIR)$(PREFIX)/sbin/newaliases
	install -d $(DESTDIR)$(PREFIX)/bin
	ln -sf ../sbin/tern $(DESTDIR)$(PREFIX)/bin/mail
	ln -sf ../sbin/tern $(DESTDIR)$(PREFIX)/bin/mailx
	@if [ -e $(DESTDIR)/etc/tern.conf ]; then echo "keeping existing $(DESTDIR)/etc/tern.conf"; \
	  else install -D -m 0644 etc/tern.conf $(DESTDIR)/etc/tern.conf; fi
	install -D -m 0755 etc/init.d/tern $(DESTDIR)/etc/init.d/tern
	install -D -m 0644 etc/systemd/tern.service $(DESTDIR)/lib/systemd/system/tern.service

# Static musl builds for routers. Needs the target's Rust standard library
# (`rustup target add $(TARGET)`) and, for ring's C code, a cross C compiler
# (Debian: gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf). MIPS is tier 3
# in Rust: build it with the OpenWrt SDK's toolchain instead.
CROSS_CC_aarch64-unknown-linux-musl := aarch64-linux-gnu-gcc
CROSS_CC_armv7-unknown-linux-musleabihf := arm-linux-gnueabihf-gcc
CROSS_CC_x86_64-unknown-linux-musl := gcc
CROSS_QEMU_aarch64-unknown-linux-musl := qemu-aarch64-static
CROSS_QEMU_armv7-unknown-linux-musleabihf := qemu-arm-static
CROSS_QEMU_x86_64-unknown-linux-musl :=

# Flash size of the static binary (it stays a static PIE where the target
# makes one, x86_64: ASLR is kept). Savings measured on x86_64 musl:
# - linked by rust-lld, which rustup's rustc ships (found through its gcc-ld
#   directory, as rustc itself does): -5 KB;
# - relative relocations packed as RELR (-z pack-relative-relocs), applied
#   by the start code of musl >= 1.2.4 (Rust's self-contained musl is newer):
#   -61 KB;
# - identical functions folded (--icf=all; Rust functions are unnamed_addr):
#   -20 KB;
# - no .eh_frame_hdr (-25 KB) and no unwind tables for ring's C code (-4 KB):
#   with panic = "abort" nothing unwinds; the only user was
#   RUST_BACKTRACE=full, which in a stripped binary printed bare addresses
#   (a panic still prints its message and source location).
RUST_LLD_DIR = $(shell rustc --print sysroot)/lib/rustlib/$(shell rustc -vV | sed -n 's/^host: //p')/bin/gcc-ld
CROSS_LDFLAGS = -fuse-ld=lld -B$(RUST_LLD_DIR) -Wl,-z,pack-relative-relocs -Wl,--icf=all -Wl,--no-eh-frame-hdr
CROSS_CFLAGS := -fno-asynchronous-unwind-tables -fno-unwind-tables

cross:
	@test -n "$(TARGET)" || { echo "usage: make cross TARGET=aarch64-unknown-linux-musl"; exit 2; }
	@rustup target list --installed 2>/dev/null | grep -qx "$(TARGET)" || \
	  { echo "the Rust standard library for $(TARGET) is not installed: run 'rustup target add $(TARGET)'"; exit 1; }
	@command -v $(CROSS_CC_$(TARGET)) >/dev/null || { echo "missing C cross compiler $(CROSS_CC_$(TARGET))"; exit 1; }
	@test -x "$(RUST_LLD_DIR)/ld.lld" || { echo "rust-lld not found in $(RUST_LLD_DIR) (it comes with rustup's rustc)"; exit 1; }
	CC_$(subst -,_,$(TARGET))=$(CROSS_CC_$(TARGET)) \
	CFLAGS_$(subst -,_,$(TARGET))="$(CROSS_CFLAGS)" \
	CARGO_TARGET_$(shell echo $(TARGET) | tr a-z- A-Z_)_LINKER=$(CROSS_CC_$(TARGET)) \
	RUSTFLAGS="-C target-feature=+crt-static $(foreach f,$(CROSS_LDFLAGS),-C link-arg=$(f))" \
	  $(CARGO) build --release --target $(TARGET)
	@ls -l target/$(TARGET)/release/tern | awk '{print "static binary: " $$5 " bytes"}'

# A loopback smoke test of the cross binary under qemu-user.
cross-test: cross
	$(PYTHON) tests/cross_smoke.py $(CROSS_QEMU_$(TARGET)) target/$(TARGET)/release/tern

# Fuzzing (fuzz/README.md): every cargo-fuzz target in fuzz/ for
# FUZZ_SECONDS each, one at a time, one process, niced; fails on the first
# target that crashes (the input is in fuzz/artifacts/NAME/). New corpus
# entries go to fuzz/work/NAME (not checked in); the checked-in seeds
# (fuzz/corpus/NAME) and crash reproducers (fuzz/regressions/NAME) are read
# too, and `make test` replays both without a fuzzer. Targets are built
# optimized with debug assertions and overflow checks (-O -a). cargo-fuzz needs
# nightly flags: the nightly toolchain when rustup has one, else stable with
# RUSTC_BOOTSTRAP=1. FUZZ_TARGETS picks targets; FUZZ_ARGS adds libFuzzer
# flags.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= $(shell sed -n 's/^name = "\(.*\)"$$/\1/p' fuzz/Cargo.toml | grep -v '^tern-fuzz$$')
FUZZ_ARGS ?=
FUZZ_CARGO = $(shell if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then echo "cargo +nightly"; else echo "env RUSTC_BOOTSTRAP=1 cargo"; fi)

fuzz-deps:
	@command -v rustup >/dev/null || command -v cargo >/dev/null || { echo "fuzz: no Rust toolchain (cargo) found"; exit 1; }
	@if ! cargo fuzz --version >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing cargo-fuzz from crates.io"; \
	    cargo install --locked cargo-fuzz || { echo "cargo install cargo-fuzz failed"; exit 1; }; \
	  else \
	    echo "fuzz: cargo-fuzz is missing (run 'make fuzz' as root, or 'cargo install cargo-fuzz')"; exit 1; \
	  fi; \
	fi
	@echo "fuzz: $$(cargo fuzz --version), toolchain: $(FUZZ_CARGO) ($$($(subst cargo,rustc,$(FUZZ_CARGO)) --version))"

fuzz-build: fuzz-deps
	cd fuzz && nice -n 10 $(FUZZ_CARGO) fuzz build -O -a

fuzz: fuzz-build
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/work/$$t fuzz/regressions/$$t; \
	  echo "== fuzz $$t: $(FUZZ_SECONDS) s"; \
	  (cd fuzz && nice -n 10 $(FUZZ_CARGO) fuzz run -O -a $$t work/$$t corpus/$$t regressions/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 $(FUZZ_ARGS)) >fuzz/work/$$t.log 2>&1; \
	  rc=$$?; \
	  grep -E '^(#[0-9]+ *DONE|stat::number_of_executed_units|thread .* panicked|SUMMARY|Test unit written|Error)' fuzz/work/$$t.log; \
	  if [ $$rc != 0 ] || grep -q 'Test unit written' fuzz/work/$$t.log; then \
	    echo "fuzz: $$t FAILED (log: fuzz/work/$$t.log). Minimize with"; \
	    echo "  cd fuzz && $(FUZZ_CARGO) fuzz tmin $$t artifacts/$$t/<file>"; \
	    echo "then copy the minimized input into fuzz/regressions/$$t/"; \
	    exit 1; \
	  fi; \
	done; echo "fuzz: no crash in $(words $(FUZZ_TARGETS)) targets"

clean:
	$(CARGO) clean
	rm -rf run
