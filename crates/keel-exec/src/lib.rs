//! keel-exec: being written.
