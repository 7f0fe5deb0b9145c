//! keel-health: being written.
