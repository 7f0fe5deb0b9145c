//! alert-history binary.

fn main() {}
