//! The bridge client: one HTTP PUT of `{"name": …, "reply": …}` to the Exocortex XMPP
//! bridge's `/replies` rail, exactly as `../shared/bridge-api.md` specifies (ASCII-only JSON).
//!
//! INTERFACE SKELETON — owned by the bridge helper.

use std::time::Duration;

/// What became of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The bridge answered 2xx.
    Delivered,
    /// Connection refused or reset, timeout, 5xx, 408, 429: keep the message, retry later.
    /// The string says what happened, for the log.
    Retry(String),
    /// Any other 4xx (or an unusable URL): the configuration or a bug. Keep the message and
    /// say so loudly; it is retried on the normal schedule.
    Permanent(String),
}

/// A client for one bridge URL.
#[derive(Debug, Clone)]
pub struct Bridge {
    url: String,
    name: String,
    timeout: Duration,
}

impl Bridge {
    /// A client that PUTs to `url` as `name`, each request taking at most `timeout` in total
    /// (connecting included).
    pub fn new(url: &str, name: &str, timeout: Duration) -> Bridge {
        Bridge {
            url: url.to_owned(),
            name: name.to_owned(),
            timeout,
        }
    }

    /// Sends one digest text as `reply`.
    pub fn send(&self, reply: &str) -> Outcome {
        let _ = (reply, &self.url, &self.name, self.timeout);
        todo!()
    }
}

/// The request body: a JSON object with `name` and `reply`, pure ASCII (every non-ASCII
/// character as a `\uXXXX` escape, surrogate pairs beyond the BMP), as Python's `json.dumps`
/// writes it.
pub fn json_body(name: &str, reply: &str) -> String {
    let _ = (name, reply);
    todo!()
}
