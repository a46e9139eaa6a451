//! The process's one source of randomness: the kernel's CSPRNG through
//! ring's `SystemRandom` (getrandom(2)), which rustls already links.
//!
//! Why one helper: DNS query IDs (RFC 5452), drop file names and
//! Message-IDs must be unpredictable, and three hand-rolled `/dev/urandom`
//! readers each fell back to zeros or the PID when the read failed. Here a
//! failure is an error that the caller turns into a refusal (fail closed),
//! never a weaker value.

use std::io;

use ring::rand::{SecureRandom, SystemRandom};

/// Fills `buf` from the kernel's random source.
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    SystemRandom::new()
        .fill(buf)
        .map_err(|_| io::Error::other("the system random source failed"))
}

pub fn u64() -> io::Result<u64> {
    let mut b = [0u8; 8];
    fill(&mut b)?;
    Ok(u64::from_ne_bytes(b))
}

pub fn u32() -> io::Result<u32> {
    let mut b = [0u8; 4];
    fill(&mut b)?;
    Ok(u32::from_ne_bytes(b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_differ() {
        let a: Vec<u64> = (0..8).map(|_| super::u64().unwrap()).collect();
        let mut b = a.clone();
        b.dedup();
        assert_eq!(a.len(), b.len());
        let mut buf = [0u8; 64];
        super::fill(&mut buf).unwrap();
        assert!(buf.iter().any(|&x| x != 0));
    }
}
