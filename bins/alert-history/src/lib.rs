//! alert-history: being written.
