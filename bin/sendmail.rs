//! The sendmail shim (also `mailq` and `newaliases`). INTERFACE SKELETON — owned by the
//! sendmail helper.
fn main() {}
