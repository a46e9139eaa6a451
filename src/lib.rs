//! tern: a small mail transfer agent for routers and embedded Linux.
//!
//! ```text
//!  LAN device ──SMTP──▶ reactor ─▶ smtp::server ─▶ spool (tmp → msg, group commit)
//!  sendmail ──drop file──────────────────────────▶ spool
//!                                                    │ queue (due times)
//!                                                    ▼
//!                                daemon::runner ─┬─▶ delivery::local (Maildir / mbox)
//!                                                └─▶ outbound ─▶ dns + smtp::client ─▶ smarthost / MX
//!                                failures ─▶ bounce (RFC 3464) ─▶ spool
//! ```
//!
//! One process, one thread. Who owns what:
//! - `reactor` owns every socket, the timer heap and the signal pipe; it is
//!   the only module that imports mio.
//! - `spool` owns the spool directory; `queue` owns the schedule (in memory).
//! - `smtp::server`, `smtp::client` and `dns` are sans-IO machines: bytes,
//!   events and `now` in; bytes, events and deadlines out.
//! - `daemon` moves bytes and events between them and owns the sessions.
//! - `config` turns the `key = value` file into a validated `Config`.
//! - `cli` is the sendmail/mailq/queue front end. It talks to the daemon
//!   through the spool's drop directory (sendmail), a signal (SIGUSR2: a
//!   drop is waiting) and the control socket (`control`: queue changes, so
//!   the daemon stays the only writer of the queue); `mailq` and `queue
//!   show` only read the spool.
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
pub mod dns;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod logsafe;
pub mod outbound;
pub mod queue;
pub mod random;
pub mod reactor;
pub mod rewrite;
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
