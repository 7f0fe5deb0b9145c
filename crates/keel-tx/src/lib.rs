//! keel-tx: being written.
