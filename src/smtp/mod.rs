//! SMTP protocol machines, all sans-IO: the command and reply codecs, the
//! DATA decoder, the server session and the client session.

#![deny(clippy::string_slice, clippy::indexing_slicing)]

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod reply;
pub mod scan;
pub mod server;
