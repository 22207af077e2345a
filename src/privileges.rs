//! Dropping root after binding, and proving it is gone.
//!
//! INTERFACE SKELETON — owned by the daemon helper, who designs this module.
