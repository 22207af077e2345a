//! The bridge client: one HTTP PUT of `{"name": …, "reply": …}` to the Exocortex XMPP
//! bridge's `/replies` rail, exactly as `../shared/bridge-api.md` specifies (ASCII-only JSON),
//! and the classification of what came back into delivered, retry later, or permanent.
//!
//! The bridge is a single-threaded HTTP/1.0 Python server that answers `500` to a body with
//! any byte above 0x7F and to a request without `Content-Length`, so the body is encoded by
//! hand ([`json_body`]) and sent as a byte slice, whose length ureq puts in the header.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};

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
    /// Built once: it holds the TLS configuration (root certificates), which is costly to
    /// set up for every message.
    agent: ureq::Agent,
}

impl Bridge {
    /// A client that PUTs to `url` as `name`, each request taking at most `timeout` in total
    /// (connecting included).
    pub fn new(url: &str, name: &str, timeout: Duration) -> Bridge {
        let config = ureq::Agent::config_builder()
            // The whole request, from name resolution to the last byte of the answer, is
            // bounded: a hung bridge must cost one timeout, not hang delivery forever.
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout))
            // 4xx and 5xx are answers to classify, not errors.
            .http_status_as_error(false)
            // A redirect of a PUT means the URL is wrong; say so instead of following it.
            .max_redirects(0)
            // The bridge speaks HTTP/1.0 and closes every connection; for any other server a
            // pooled connection idle for minutes would only come back reset.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            // The bridge runs on this box or beside it; a proxy from the environment (set
            // for some unrelated program) must not silently reroute mail.
            .proxy(None)
            .user_agent(concat!("smtp_bridge/", env!("CARGO_PKG_VERSION")))
            // ureq's default buffers (128 KiB each way) are allocated and zeroed for every
            // connection, which here is every message: an answer is a status line and a few
            // headers, a request a few KiB (larger ones are written in pieces of the output
            // buffer). Headers that do not fit are an error that names the limit. 8 KiB each
            // way instead of 16 and 32 saved about 0.004 ms of CPU per message (the zeroing).
            .input_buffer_size(8 << 10)
            .max_response_header_size(8 << 10)
            .output_buffer_size(8 << 10)
            .build();
        Bridge {
            url: url.to_owned(),
            name: name.to_owned(),
            timeout,
            agent: ureq::Agent::with_parts(
                config,
                ureq::unversioned::transport::DefaultConnector::new(),
                LiteralFirst::default(),
            ),
        }
    }

    /// Sends one digest text as `reply`.
    pub fn send(&self, reply: &str) -> Outcome {
        let lower = self.url.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            return Outcome::Permanent(format!("unusable bridge URL {:?}", self.url));
        }
        let body = json_body(&self.name, reply);
        let result = self
            .agent
            .put(&self.url)
            .header("Content-Type", "application/json")
            // A byte slice has a known length, so ureq sends Content-Length (never chunked
            // encoding, which the HTTP/1.0 bridge does not understand).
            .send(body.as_bytes());
        match result {
            Ok(response) => classify_status(response.status().as_u16()),
            Err(err) => classify_error(&err, self.timeout),
        }
    }
}

/// The table of `bridge-api.md`, for an HTTP status.
pub fn classify_status(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 | 500..=599 => Outcome::Retry(format!("bridge answered {status}")),
        300..=399 => Outcome::Permanent(format!(
            "bridge answered {status} (a redirect: check the queue URL)"
        )),
        400..=499 => Outcome::Permanent(format!("bridge answered {status}")),
        // 1xx as a final answer, or nonsense: the server is not behaving; try again later.
        _ => Outcome::Retry(format!("bridge answered {status}")),
    }
}

/// The table of `bridge-api.md`, for a request that got no answer.
fn classify_error(err: &ureq::Error, timeout: Duration) -> Outcome {
    match err {
        ureq::Error::Timeout(_) => Outcome::Retry(timed_out(timeout)),
        ureq::Error::Io(e) => Outcome::Retry(describe_io(e, timeout)),
        ureq::Error::HostNotFound => Outcome::Retry("bridge host not found".to_owned()),
        ureq::Error::ConnectionFailed => Outcome::Retry("connection failed".to_owned()),
        ureq::Error::Protocol(e) => Outcome::Retry(format!("bad answer from bridge: {e}")),
        // The URL itself cannot be used: nothing will change until someone edits it.
        ureq::Error::BadUri(e) => Outcome::Permanent(format!("unusable bridge URL: {e}")),
        ureq::Error::Http(e) => Outcome::Permanent(format!("unusable bridge URL: {e}")),
        ureq::Error::TooManyRedirects | ureq::Error::RedirectFailed => {
            Outcome::Permanent("bridge answered with a redirect (check the queue URL)".to_owned())
        }
        // A certificate the TLS library rejects needs a person to fix it.
        ureq::Error::Tls(e) => Outcome::Permanent(format!("TLS error: {e}")),
        ureq::Error::Rustls(e) => Outcome::Permanent(format!("TLS error: {e}")),
        // Anything else: the message is kept either way, and a transient failure is the
        // answer that does not raise a false alarm.
        other => Outcome::Retry(format!("request failed: {other}")),
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("timed out after {}s", timeout.as_secs_f64())
}

/// A short reason for an I/O failure, as a log line wants it.
fn describe_io(e: &io::Error, timeout: Duration) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
            "connection reset".to_owned()
        }
        io::ErrorKind::BrokenPipe => "connection closed while sending".to_owned(),
        io::ErrorKind::UnexpectedEof => "connection closed without an answer".to_owned(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => timed_out(timeout),
        _ => format!("network error: {e}"),
    }
}

/// The request body: a JSON object with `name` and `reply`, pure ASCII (every non-ASCII
/// character as a `\uXXXX` escape, surrogate pairs beyond the BMP), as Python's `json.dumps`
/// writes it.
pub fn json_body(name: &str, reply: &str) -> String {
    // Escapes grow the text by up to 12 bytes a character; start with room for the common
    // case and let the String grow for the rest.
    let mut out = String::with_capacity(name.len() + reply.len() + 32);
    out.push_str("{\"name\": ");
    push_json_string(&mut out, name);
    out.push_str(", \"reply\": ");
    push_json_string(&mut out, reply);
    out.push('}');
    out
}

/// Appends `s` as a JSON string literal that is pure ASCII: the same escapes as Python's
/// `json.dumps(ensure_ascii=True)`, which also escapes DEL (0x7F).
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    // Writing to a String cannot fail.
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// The address an IP-literal URL (`http://127.0.0.1:8003/…`, `http://[::1]/…`) names, with
/// its port or the scheme's default; `None` for a host name.
fn literal_addr(uri: &ureq::http::Uri) -> Option<SocketAddr> {
    let authority = uri.authority()?;
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = host.parse().ok()?;
    let port = match (authority.port_u16(), uri.scheme_str()) {
        (Some(port), _) => port,
        (None, Some(s)) if s.eq_ignore_ascii_case("https") => 443,
        (None, _) => 80,
    };
    Some(SocketAddr::new(ip, port))
}

/// ureq's resolver, minus its thread per request. With a timeout set, ureq's
/// `DefaultResolver` runs every lookup on a fresh thread (so that a hung DNS server cannot
/// outlast the timeout), even for `127.0.0.1`: for a local bridge that thread was the largest
/// CPU cost of a PUT. An IP literal needs no lookup at all; a name (`localhost`, the default)
/// is looked up once per [`Bridge`] (one delivery pass) and the answer reused, so a pass costs
/// one lookup thread, not one per message.
#[derive(Debug, Default)]
struct LiteralFirst {
    /// The last name looked up (`host:port` with the scheme) and its addresses.
    cache: Mutex<Option<(String, Vec<SocketAddr>)>>,
}

impl Resolver for LiteralFirst {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        if let Some(addr) = literal_addr(uri) {
            let mut out = self.empty();
            out.push(addr);
            return Ok(out);
        }
        let key = format!(
            "{}://{}",
            uri.scheme_str().unwrap_or(""),
            uri.authority().map(|a| a.as_str()).unwrap_or("")
        );
        // A poisoned lock only means another request panicked mid-lookup: skip the cache.
        if let Ok(cache) = self.cache.lock() {
            if let Some((cached, addrs)) = cache.as_ref() {
                if *cached == key {
                    let mut out = self.empty();
                    for addr in addrs {
                        out.push(*addr);
                    }
                    return Ok(out);
                }
            }
        }
        let resolved = DefaultResolver::default().resolve(uri, config, timeout)?;
        if let Ok(mut cache) = self.cache.lock() {
            *cache = Some((key, resolved.iter().copied().collect()));
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes() {
        let table: &[(&str, &str)] = &[
            ("", r#""""#),
            ("plain text", r#""plain text""#),
            ("say \"hi\"", r#""say \"hi\"""#),
            ("back\\slash", r#""back\\slash""#),
            ("a\nb\r\nc\td", r#""a\nb\r\nc\td""#),
            ("\u{08}\u{0c}", r#""\b\f""#),
            ("\u{00}\u{01}\u{1f}", r#""\u0000\u0001\u001f""#),
            ("~\u{7f}", r#""~\u007f""#),
            ("café", r#""caf\u00e9""#),
            ("Grüße ÿ", r#""Gr\u00fc\u00dfe \u00ff""#),
            ("\u{80}\u{a0}", r#""\u0080\u00a0""#),
            ("日本語", r#""\u65e5\u672c\u8a9e""#),
            ("€", r#""\u20ac""#),
            ("\u{feff}\u{fffd}", r#""\ufeff\ufffd""#),
            ("😀", r#""\ud83d\ude00""#),
            ("𝄞 clef", r#""\ud834\udd1e clef""#),
            ("\u{10ffff}", r#""\udbff\udfff""#),
            ("/ is not escaped", r#""/ is not escaped""#),
        ];
        for (input, want) in table {
            let mut got = String::new();
            push_json_string(&mut got, input);
            assert_eq!(&got, want, "{input:?}");
        }
    }

    #[test]
    fn body_shape_is_pythons() {
        assert_eq!(json_body("box", "hi"), r#"{"name": "box", "reply": "hi"}"#);
    }

    /// Whatever goes in, the body is ASCII and a real JSON parser gives the strings back.
    #[test]
    fn body_round_trips_through_serde_json() {
        let mut every_char = String::new();
        for cp in (0u32..0x800).chain(0xd7f0..0xe010).chain(0xfff0..0x10100) {
            if let Some(c) = char::from_u32(cp) {
                every_char.push(c);
            }
        }
        let samples = [
            "",
            "From: Jörg <j@example.org>\nSubject: Ärger 😀\n\nbody\r\nline",
            "中文 한국어 日本語 العربية עברית",
            "\u{0}\u{1}\u{7}\u{1b}[31m\u{7f}",
            "\u{1f600}\u{1f9d1}\u{200d}\u{1f4bb}\u{10ffff}",
            &every_char,
        ];
        for name in ["web1", "naïve-host 🖥"] {
            for reply in samples {
                let body = json_body(name, reply);
                assert!(body.bytes().all(|b| b < 0x80), "non-ASCII byte in {body:?}");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["name"].as_str(), Some(name));
                assert_eq!(v["reply"].as_str(), Some(reply));
                assert_eq!(v.as_object().map(|o| o.len()), Some(2));
            }
        }
    }

    #[test]
    fn status_table() {
        let table: &[(u16, &str)] = &[
            (200, "delivered"),
            (201, "delivered"),
            (204, "delivered"),
            (299, "delivered"),
            (408, "retry"),
            (429, "retry"),
            (500, "retry"),
            (502, "retry"),
            (503, "retry"),
            (599, "retry"),
            (100, "retry"),
            (400, "permanent"),
            (401, "permanent"),
            (403, "permanent"),
            (404, "permanent"),
            (405, "permanent"),
            (413, "permanent"),
            (301, "permanent"),
            (307, "permanent"),
        ];
        for (status, want) in table {
            let got = match classify_status(*status) {
                Outcome::Delivered => "delivered",
                Outcome::Retry(why) => {
                    assert!(why.contains(&status.to_string()), "{why}");
                    "retry"
                }
                Outcome::Permanent(why) => {
                    assert!(why.contains(&status.to_string()), "{why}");
                    "permanent"
                }
            };
            assert_eq!(got, *want, "status {status}");
        }
    }

    #[test]
    fn io_error_table() {
        let t = Duration::from_secs(3);
        let table = [
            (io::ErrorKind::ConnectionRefused, "connection refused"),
            (io::ErrorKind::ConnectionReset, "connection reset"),
            (io::ErrorKind::ConnectionAborted, "connection reset"),
            (io::ErrorKind::BrokenPipe, "connection closed while sending"),
            (
                io::ErrorKind::UnexpectedEof,
                "connection closed without an answer",
            ),
            (io::ErrorKind::TimedOut, "timed out after 3s"),
        ];
        for (kind, want) in table {
            let err = ureq::Error::Io(io::Error::from(kind));
            assert_eq!(classify_error(&err, t), Outcome::Retry(want.to_owned()));
        }
    }

    #[test]
    fn unusable_urls_are_permanent() {
        for url in [
            "",
            "localhost:8003/replies",
            "ftp://localhost/replies",
            "http://",
        ] {
            let b = Bridge::new(url, "box", Duration::from_secs(1));
            assert!(
                matches!(b.send("x"), Outcome::Permanent(_)),
                "{url:?}: {:?}",
                b.send("x")
            );
        }
    }

    #[test]
    fn ip_literals_need_no_lookup() {
        let table: &[(&str, Option<&str>)] = &[
            ("http://127.0.0.1:8003/replies", Some("127.0.0.1:8003")),
            ("http://127.0.0.1/replies", Some("127.0.0.1:80")),
            ("https://10.1.2.3/replies", Some("10.1.2.3:443")),
            ("HTTPS://10.1.2.3/replies", Some("10.1.2.3:443")),
            ("http://[::1]:8003/replies", Some("[::1]:8003")),
            ("http://[::1]/replies", Some("[::1]:80")),
            ("http://localhost:8003/replies", None),
            ("http://bridge.example.org/replies", None),
            ("http://127.0.0.1.example.org/", None),
        ];
        for (url, want) in table {
            let uri: ureq::http::Uri = url.parse().unwrap();
            let want: Option<SocketAddr> = want.map(|w| w.parse().unwrap());
            assert_eq!(literal_addr(&uri), want, "{url}");
        }
    }
}
