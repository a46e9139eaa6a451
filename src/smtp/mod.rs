//! SMTP protocol machines, all sans-IO: the command and reply codecs, the
//! DATA decoder, the server session and the client session.
//!
//! Everything here reads bytes from the network, so no input may panic
//! (a release build aborts on panic, and one command line once stopped all
//! mail): commands are parsed as bytes, a `str` is never sliced at a byte
//! offset, and every index is checked (`get`, `split_at_checked`,
//! iterators). The crate-wide lints (`src/lib.rs`) keep it so.

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod dsn;
pub mod mime7bit;
pub mod reply;
pub mod scan;
pub mod server;
