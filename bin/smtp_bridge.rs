//! The smtp_bridge daemon. INTERFACE SKELETON — owned by the daemon helper.
fn main() {}
