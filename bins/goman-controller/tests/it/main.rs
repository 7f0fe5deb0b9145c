//! goman-controller's integration tests, in one binary: the AWS SDK makes
//! every test binary slow to link, so they share one.

mod cli;
mod daemon;
mod e2e;
mod faults;
mod lifecycle;
mod support;
