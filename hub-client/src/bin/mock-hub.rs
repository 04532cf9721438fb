//! mock-hub binary (to be written).
fn main() {}
