//! Delivery: drains the spool through the bridge, oldest first, with capped exponential
//! backoff and a lifetime after which a message moves to `failed/`.
//!
//! INTERFACE SKELETON — owned by the spool helper.

use std::io;
use std::time::{Duration, SystemTime};

use crate::config::Config;

/// What one pass over the queue did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// Messages the bridge accepted (and that were removed from the queue).
    pub delivered: usize,
    /// Messages that were tried and are still waiting.
    pub deferred: usize,
    /// Messages moved to `failed/`.
    pub failed: usize,
    /// Messages still waiting, not tried in this pass (not due, or behind a failed one).
    pub waiting: usize,
    /// When the next attempt is due, if anything is waiting.
    pub next_due: Option<SystemTime>,
}

/// The delay before attempt `attempts + 1` after `attempts` failures: capped exponential.
pub fn backoff(attempts: u32) -> Duration {
    let _ = attempts;
    todo!()
}

/// Delivers what is due, in queue order. `force` ignores the backoff schedule (`sendmail -q`).
/// Ingests the maildrop first. Takes the runner lock; returns an empty report when another
/// process holds it.
pub fn run_once(config: &Config, force: bool) -> io::Result<RunReport> {
    let _ = (config, force);
    todo!()
}

/// The daemon's background delivery thread.
#[derive(Debug)]
pub struct DeliveryThread {
    _private: (),
}

impl DeliveryThread {
    /// Starts the thread; it runs passes when nudged and when the next attempt is due.
    pub fn spawn(config: Config) -> io::Result<DeliveryThread> {
        let _ = config;
        todo!()
    }

    /// New mail was committed: run a pass soon. Never blocks.
    pub fn nudge(&self) {
        todo!()
    }

    /// Use a new configuration from the next pass on (SIGHUP).
    pub fn reload(&self, config: Config) {
        let _ = config;
        todo!()
    }

    /// Asks the thread to stop after the request in flight, and waits for it at most `grace`.
    pub fn shutdown(self, grace: Duration) {
        let _ = grace;
        todo!()
    }
}
