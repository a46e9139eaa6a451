//! Byte scans on message content, eight octets at a time.
//!
//! Every relayed octet is scanned twice (the DATA decoder looks for line
//! ends and 8-bit octets, the client's dot-stuffer for dots), and for a
//! 100 KB message that was the largest user-space cost (perf). Plain Rust
//! on `u64` words ("SWAR"), no dependency, no `unsafe`.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Marks (high bit of the octet) every zero octet of `x`; exact for the
/// lowest marked octet, which is all [`position2`] uses.
#[inline]
fn zero_octets(x: u64) -> u64 {
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The first index of `a` or `b` in `hay`.
pub fn position2(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    let (pa, pb) = (ONES * a as u64, ONES * b as u64);
    let (words, rest) = hay.as_chunks::<8>();
    let mut base = 0;
    for w in words {
        let x = u64::from_le_bytes(*w);
        let hit = zero_octets(x ^ pa) | zero_octets(x ^ pb);
        if hit != 0 {
            return Some(base + (hit.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    rest.iter()
        .position(|&c| c == a || c == b)
        .map(|i| base + i)
}

/// The first index of `a` in `hay`.
pub fn position(hay: &[u8], a: u8) -> Option<usize> {
    position2(hay, a, a)
}

/// Whether any octet has its high bit set.
pub fn has_high_bit(hay: &[u8]) -> bool {
    let (words, rest) = hay.as_chunks::<8>();
    for w in words {
        if u64::from_le_bytes(*w) & HIGHS != 0 {
            return true;
        }
    }
    rest.iter().any(|&c| c >= 0x80)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::string_slice)] // tests index fixed data
mod tests {
    use super::*;

    /// Against the obvious scans, for every length up to 40, every
    /// position of the target and octets around it that trip naive SWAR
    /// (0x80, 0xFF, the target plus and minus one).
    #[test]
    fn agree_with_naive_scans() {
        let fillers = [b'x', 0x00, 0x01, 0x7F, 0x80, 0xFF, b'\r' + 1, b'\n' - 1];
        for len in 0..40usize {
            for &fill in &fillers {
                for at in 0..=len {
                    let mut hay = vec![fill; len];
                    if at < len {
                        hay[at] = b'\n';
                    }
                    let naive2 = hay.iter().position(|&c| c == b'\r' || c == b'\n');
                    assert_eq!(position2(&hay, b'\r', b'\n'), naive2, "{hay:?}");
                    let naive = hay.iter().position(|&c| c == b'.');
                    assert_eq!(position(&hay, b'.'), naive, "{hay:?}");
                    assert_eq!(has_high_bit(&hay), hay.iter().any(|&c| c >= 0x80));
                }
            }
        }
        let mut hay = vec![b'a'; 33];
        hay[20] = b'.';
        hay[9] = b'\r';
        assert_eq!(position(&hay, b'.'), Some(20));
        assert_eq!(position2(&hay, b'\r', b'\n'), Some(9));
        assert!(!has_high_bit(&hay));
        hay[32] = 0xC3;
        assert!(has_high_bit(&hay));
    }
}
