//! SMTP protocol machines, all sans-IO: the command and reply codecs, the
//! DATA decoder, the server session and the client session.

pub mod address;
pub mod client;
pub mod command;
pub mod data;
pub mod mime7bit;
pub mod reply;
pub mod scan;
pub mod server;
