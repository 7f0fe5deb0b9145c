//! keel-idempotency: being written.
