//! Empty: a build script makes the `[build-dependencies]` in Cargo.toml part of the host build.
fn main() {}
