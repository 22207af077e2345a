//! The daemon's mio event loop: listeners, connections and timers around [`crate::smtp`]
//! sessions; spool writes and delivery run on other threads that wake the loop.
//!
//! INTERFACE SKELETON — owned by the daemon helper, who designs this module.
