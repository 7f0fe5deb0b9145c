//! keel-telemetry: being written.
