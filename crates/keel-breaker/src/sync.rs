//! The synchronisation primitives the breaker's state machine uses.
//!
//! Normal builds get `std`; `RUSTFLAGS="--cfg loom"` swaps in loom's
//! instrumented versions so the model tests in `loom_tests` explore every
//! interleaving of the concurrent state machine.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

/// Locks `mutex`, ignoring poisoning: every critical section in this crate
/// leaves the protected data consistent before anything that can panic (a
/// listener) runs, and listeners are called after the lock is released.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}
