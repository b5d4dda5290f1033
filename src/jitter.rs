//! The randomness behind jitter: source schedules (±10%) and delivery retries (±20%)
//! both draw their random number in [0, 1) here, so the pure code that applies the
//! jitter is handed it and stays testable.

/// a number in [0,1) from std's RandomState hasher (no rand crate); good enough for jitter.
pub fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    // Every RandomState gets fresh keys (random per thread, bumped per call),
    // so even an empty hash differs from call to call.
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}
