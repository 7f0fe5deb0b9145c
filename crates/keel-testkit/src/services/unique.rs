//! Unique names for per-test isolation.

use std::sync::atomic::{AtomicU64, Ordering};

use keel_core::Rng;

/// 12 lowercase hex digits that differ between tests, processes and runs:
/// the process id and a per-process counter mixed with entropy.
pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mixed = Rng::from_entropy().next_u64()
        ^ (u64::from(std::process::id()) << 20)
        ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{:012x}", mixed & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_distinct_hex() {
        let a = unique_suffix();
        let b = unique_suffix();
        assert_ne!(a, b);
        assert_eq!(a.len(), 12);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
    }
}
