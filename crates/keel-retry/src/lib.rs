//! keel-retry: being written.
