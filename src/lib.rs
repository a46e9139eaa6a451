//! tern: a small mail transfer agent for routers and embedded Linux.
//!
//! ```text
//!  LAN device ──SMTP──▶ reactor ─▶ smtp::server ─▶ spool (tmp → msg, group commit)
//!  sendmail ──drop file──────────────────────────▶ spool
//!                                                    │ queue (due times)
//!                                                    ▼
//!                                daemon::runner ─┬─▶ delivery::local (Maildir / mbox)
//!                                                └─▶ outbound ─▶ dns + smtp::client ─▶ smarthost / MX
//!                                                                  (LMTP mode) ─▶ local LMTP server
//!                                failures ─▶ bounce (RFC 3464) ─▶ spool
//! ```
//!
//! One process, one thread. Who owns what:
//! - `reactor` owns every socket, the timer heap and the signal pipe; it is
//!   the only module that imports mio.
//! - `spool` owns the spool directory; `queue` owns the schedule (in memory).
//! - `smtp::server`, `smtp::client`, `dns` and `outbound::machine` are
//!   sans-IO machines: bytes, events and `now` in; bytes, events and
//!   deadlines out.
//! - `daemon` moves bytes and events between them. It is split into parts,
//!   each the only owner of its maps (table in the `daemon` module doc),
//!   which borrow the shared reactor, spool and configuration per call and
//!   talk to each other through parameters and return values.
//! - `config` turns the `key = value` file into a validated `Config`.
//! - `cli` is the sendmail/mailq/queue front end. It talks to the daemon
//!   through the spool's drop directory (sendmail), a signal (SIGUSR2: a
//!   drop is waiting) and the control socket (`control`: queue changes, so
//!   the daemon stays the only writer of the queue); `mailq` and `queue
//!   show` only read the spool.
//!
//! # Data path
//!
//! How one message travels, and which struct owns each step:
//!
//! 1. **Accept.** A listener socket reports readiness
//!    (`reactor::Readiness::Acceptable`); `daemon::inbound::InboundSessions`
//!    accepts it under the connection limits and creates a
//!    `smtp::server::ServerSession` for it.
//! 2. **Receive.** `InboundSessions` pumps bytes between the socket
//!    (`daemon::link::Link`, plain or TLS) and the session, which decides
//!    every reply; recipients are routed by the one recipient policy
//!    (`delivery::RecipientPolicy` over the daemon's `LocalTables`). At DATA
//!    the body streams into a `spool::Incoming` file under `tmp/`. (A
//!    sendmail drop enters here instead: `daemon::drop::DropImports` copies
//!    it into a spool file a bounded amount per turn.)
//! 3. **Commit.** At the end of the loop turn, the group commit
//!    (`daemon::commit`) renames every finished file into `msg/` with one
//!    directory sync (`spool::Spool::commit`); only then does the session
//!    answer 250 with the queue ID.
//! 4. **Schedule.** `daemon::runner::QueueRunner` puts the ID in its
//!    `queue::Queue` (due now) and keeps the envelope in memory for the
//!    first attempt; recovery at start does the same for every `msg/` file.
//! 5. **Attempt.** When the ID is due, the `QueueRunner` splits the
//!    recipients: local ones become jobs it moves a bounded amount per
//!    turn (`delivery::jobs`, Maildir / mbox) or, with `local_delivery =
//!    lmtp`, one `outbound::Job` to the LMTP server; remote ones become
//!    one `outbound::Job` per destination, handed to
//!    `daemon::outbound::OutboundDriver`.
//! 6. **Deliver.** The `OutboundDriver` runs each job as an
//!    `outbound::machine::Delivery` (MX walk, TLS policy, connection
//!    reuse): lookups through `daemon::dns::DnsDriver` (the resolver), the
//!    SMTP dialog through `smtp::client`, the body streamed from the spool
//!    file. Each finished job comes back as a `JobReport` (one `Outcome`
//!    per recipient).
//! 7. **Settle.** When every part of the attempt is back, the `QueueRunner`
//!    writes the recipients' states to the message's state file
//!    (`spool::Spool::save_state`) and reschedules it on the pure retry
//!    schedule (`queue::after_attempt`), or removes it once every
//!    recipient is final.
//! 8. **Bounce.** Recipients that failed in the attempt (or expired) get
//!    one RFC 3464 report (`bounce`), which the `QueueRunner` submits
//!    through the spool like any message: back to step 4.
//!
//! The control socket (`daemon::control::ControlSocket`) changes the queue
//! only through the `QueueRunner` (delete, flush, hold, release).
//!
//! No input may panic tern (a release build aborts on panic: issue 11 found
//! one command line that stopped all mail). Input from the network, the
//! spool, drop files, DNS and the command line reaches most of the crate, so
//! the rule is crate-wide: a `str` is never sliced at a byte offset and
//! every index is checked (`get`, `split_at_checked`, `strip_prefix`,
//! iterators). Test modules opt out; any other `#[allow]` says why its index
//! is in range.

#![deny(clippy::string_slice, clippy::indexing_slicing)]

pub mod auth;
pub mod bounce;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod delivery;
pub mod dkim;
pub mod dns;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod http;
pub mod idmap;
pub mod logsafe;
pub mod oauth;
pub mod outbound;
pub mod queue;
pub mod random;
pub mod reactor;
pub mod rewrite;
pub mod routes;
pub mod safe_fs;
pub mod smtp;
pub mod spool;
pub mod system;
#[cfg(test)]
mod test_dir;
#[cfg(test)]
mod test_rng;
pub mod tls;
pub mod writeback;

pub use system::run_daemon;
