//! keel-testkit: being written.
