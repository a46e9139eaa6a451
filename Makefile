# tern — see README.md. `make run` starts tern on the embedded dev config;
# `make test` runs every test (installing the Debian packages the interop
# tests need when run as root).

CARGO ?= cargo
PREFIX ?= /usr/local
DESTDIR ?=
PYTHON ?= python3
DEV_CONF := etc/tern.dev.conf
TEST_PKGS := swaks postfix dnsmasq-base
PY_PKGS := pytest

.PHONY: all build release run test test-deps unit e2e check fmt clippy size bench install clean

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

test: test-deps unit e2e

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
	@$(PYTHON) -c "import pytest" 2>/dev/null || $(PYTHON) -m pip install -q $(PY_PKGS) \
	  || { echo "python package pytest is missing and could not be installed"; exit 1; }

unit:
	$(CARGO) test --all-targets

e2e: build
	TERN_BIN=$(CURDIR)/target/debug/tern $(PYTHON) -m pytest -q tests/e2e

check: fmt clippy

fmt:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

size: release
	@ls -l target/release/tern | awk '{print "stripped release binary: " $$5 " bytes"}'

bench: release
	$(PYTHON) tests/bench/bench.py

install: release
	install -D -m 0755 target/release/tern $(DESTDIR)$(PREFIX)/sbin/tern
	ln -sf tern $(DESTDIR)$(PREFIX)/sbin/sendmail
	ln -sf tern $(DESTDIR)$(PREFIX)/sbin/mailq
	ln -sf tern $(DESTDIR)$(PREFIX)/sbin/newaliases
	@if [ -e $(DESTDIR)/etc/tern.conf ]; then echo "keeping existing $(DESTDIR)/etc/tern.conf"; \
	  else install -D -m 0644 etc/tern.conf $(DESTDIR)/etc/tern.conf; fi
	install -D -m 0755 etc/init.d/tern $(DESTDIR)/etc/init.d/tern
	install -D -m 0644 etc/systemd/tern.service $(DESTDIR)/lib/systemd/system/tern.service

clean:
	$(CARGO) clean
	rm -rf run
