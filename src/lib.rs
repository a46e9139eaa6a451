//! tern
pub mod smtp;
