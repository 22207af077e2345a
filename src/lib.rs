//! smtp_bridge: a sendmail-compatible local mail transport agent that forwards a short,
//! readable digest of every message to the owner's chat through the Exocortex XMPP bridge.
//!
//! The library holds every piece of logic; the two binaries in `bin/` are thin entry points.
//! Each module has one job:
//!
//! - [`config`]: the TOML file (and the legacy INI file) -> [`config::Config`]
//! - [`envelope`]: who sent a message, to whom, how and when
//! - [`digest`]: raw message + envelope -> the text the owner reads
//! - [`bridge`]: that text -> HTTP PUT to the bridge; delivered / retry / permanent
//! - [`spool`]: the durable on-disk queue shared by both binaries
//! - [`deliver`]: drains the spool through the bridge, in order, with backoff and a lifetime
//! - [`smtp`]: the SMTP protocol engine (bytes in, replies and events out, no I/O)
//! - [`server`]: the mio event loop of the daemon
//! - [`showq`]: `mailq` and `sendmail -q` for every user, answered by the daemon over a socket
//! - [`privileges`]: drop root after binding, and prove it is gone
//! - [`sendmail`]: the sendmail command line and stdin rules
//! - [`logging`]: syslog (facility mail) with a stderr fallback
//! - [`sysexits`]: the exit codes of `sysexits.h`
#![deny(missing_docs)]

pub mod bridge;
pub mod config;
pub mod datetime;
pub mod deliver;
pub mod digest;
pub mod envelope;
pub mod logging;
pub mod privileges;
pub mod sendmail;
pub mod server;
pub mod showq;
pub mod smtp;
pub mod spool;
pub mod sysexits;
