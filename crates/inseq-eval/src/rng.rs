//! A small seeded generator (SplitMix64): the same numbers on every backend and platform, so
//! that masks, tie-breaks, random attributions and bootstrap resamples depend on the seed alone.

/// SplitMix64 (Steele, Lea and Flood, 2014).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator seeded from `seed` and `parts` (e.g. example, step and sample numbers).
    pub fn derived(seed: u64, parts: &[u64]) -> Self {
        let mut state = Rng(seed);
        let mut mixed = state.next_u64();
        for &p in parts {
            mixed = Rng(mixed ^ p.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64();
        }
        Self(mixed)
    }

    /// A stable 64-bit key of `text` (FNV-1a), to derive a generator from a name (e.g. a metric
    /// id) rather than from a position that changes with the other names asked for.
    ///
    /// ```
    /// use inseq_eval::rng::Rng;
    /// assert_eq!(Rng::key("soft_nc"), Rng::key("soft_nc"));
    /// assert_ne!(Rng::key("soft_nc"), Rng::key("soft_ns"));
    /// ```
    pub fn key(text: &str) -> u64 {
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize % n.max(1)
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// A 64-bit hash of a sequence of ids (FNV-1a), to seed per-input randomness.
pub fn hash_ids(ids: impl IntoIterator<Item = usize>) -> u64 {
    ids.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, id| {
        (h ^ id as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}
