//! A small deterministic generator for property and robustness tests:
//! xorshift64, seeded through splitmix64 so any seed (0 included) works.
//! Tests only; no test-only crates (build time). Production randomness
//! comes from the kernel (`crate::random`).

pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> TestRng {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        TestRng(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform enough in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, set: &[T]) -> T {
        let i = self.below(set.len());
        set.get(i)
            .copied()
            .unwrap_or_else(|| panic!("pick from an empty set"))
    }
}
