//! keel-notify: being written.
