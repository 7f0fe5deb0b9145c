//! keel-breaker: being written.
