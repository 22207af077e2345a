//! The `sendmail` command line and stdin rules, and the submission path of the shim.
//!
//! INTERFACE SKELETON — owned by the sendmail helper, who designs this module.
