//! keel: being written.
