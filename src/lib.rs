//! tern
pub mod queue;
pub mod reactor;
pub mod smtp;
pub mod spool;
