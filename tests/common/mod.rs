//! Shared helpers for the integration tests: a stand-in for the Exocortex XMPP bridge that
//! enforces `../shared/bridge-api.md` to the letter and can fail on demand, temporary
//! directories, a config writer, the built binaries, and tool checks that fail under CI.
#![allow(dead_code)]

pub mod daemon;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One digest the stand-in bridge accepted (answered 200).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The `name` key.
    pub name: String,
    /// The `reply` key: the digest text.
    pub reply: String,
    /// The whole PUT body as sent (pure ASCII, or it would have been rejected).
    pub body: String,
    /// When it was accepted: CLOCK_MONOTONIC in nanoseconds, comparable across processes.
    pub at_ns: u64,
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock other processes can stamp with too.
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("clock_gettime(CLOCK_MONOTONIC)");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// How the stand-in bridge answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Enforce the contract and answer 200 to a valid request.
    Accept,
    /// Read the request, then answer this status (the digest is not recorded).
    Status(u16),
    /// Read the request and never answer while this lasts (the connection is held open).
    Hang,
    /// Not listening: connections are refused.
    Down,
    /// Listening, but every connection is closed at once, before a byte is read.
    Refuse,
    /// Read the request, then answer `503 Service Unavailable` one byte per second while
    /// this lasts (the digest is not recorded): a bridge on a dying link.
    Trickle,
    /// Read the request, send the first bytes of a `200` answer, then reset the connection
    /// (RST); the digest is not recorded.
    Reset,
}

struct State {
    behaviour: Behaviour,
    received: Vec<Received>,
    rejections: Vec<String>,
}

/// A stand-in for the bridge's `/replies` rail, single-threaded like the real one.
pub struct StandInBridge {
    /// The URL to configure as `queue`: `http://127.0.0.1:PORT/replies`.
    pub url: String,
    /// The port it listens on (kept across Down/Accept).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl StandInBridge {
    /// Starts accepting on a free loopback port.
    pub fn start() -> StandInBridge {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stand-in bridge");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State {
            behaviour: Behaviour::Accept,
            received: Vec::new(),
            rejections: Vec::new(),
        }));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (state, requests, stop) = (state.clone(), requests.clone(), stop.clone());
            thread::spawn(move || serve(listener, addr, state, requests, stop));
        }
        StandInBridge {
            url: format!("http://{addr}/replies"),
            addr,
            state,
            requests,
            stop,
        }
    }

    /// Changes how it answers from the next request on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.state.lock().unwrap().behaviour = behaviour;
    }

    /// Everything accepted so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// What was accepted from the `start`th digest on (for callers that keep a running
    /// tally instead of copying everything each time).
    pub fn received_from(&self, start: usize) -> Vec<Received> {
        let state = self.state.lock().unwrap();
        state
            .received
            .get(start..)
            .map(<[Received]>::to_vec)
            .unwrap_or_default()
    }

    /// Requests that broke the contract, with the reason the real bridge would have had.
    pub fn rejections(&self) -> Vec<String> {
        self.state.lock().unwrap().rejections.clone()
    }

    /// Requests seen, accepted or not.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` digests were accepted; panics with what arrived otherwise.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "stand-in bridge: expected {n} digests within {timeout:?}, got {}: {got:#?}\nrejections: {:#?}",
                    got.len(),
                    self.rejections()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for StandInBridge {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let mut listener = Some(listener);
    while !stop.load(Ordering::SeqCst) {
        let behaviour = state.lock().unwrap().behaviour;
        if behaviour == Behaviour::Down {
            listener = None;
            thread::sleep(Duration::from_millis(5));
            continue;
        }
        if listener.is_none() {
            // Coming back up on the same port (std sets SO_REUSEADDR on Unix).
            match TcpListener::bind(addr) {
                Ok(l) => listener = Some(l),
                Err(_) => {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
        }
        let l = listener.as_ref().unwrap();
        l.set_nonblocking(true).unwrap();
        match l.accept() {
            Ok((stream, _)) => {
                requests.fetch_add(1, Ordering::SeqCst);
                if state.lock().unwrap().behaviour == Behaviour::Refuse {
                    drop(stream);
                    continue;
                }
                let _ = stream.set_nonblocking(false);
                handle(stream, &state, &stop);
            }
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn respond(stream: &mut TcpStream, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        501 => "Unsupported method",
        _ => "Status",
    };
    let _ = write!(
        stream,
        "HTTP/1.0 {status} {reason}\r\nServer: BaseHTTP/0.6 Python/3.11\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

fn handle(mut stream: TcpStream, state: &Mutex<State>, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() || request_line.is_empty() {
        return;
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();

    let reject = |stream: &mut TcpStream, status: u16, why: String| {
        state.lock().unwrap().rejections.push(why);
        respond(stream, status, "{\"error\": \"rejected\"}");
    };
    if method != "PUT" {
        return reject(&mut stream, 501, format!("method {method} not served"));
    }
    let length = match header("content-length").map(|v| v.parse::<usize>()) {
        Some(Ok(n)) => n,
        _ => return reject(&mut stream, 500, "no Content-Length".into()),
    };
    let mut body = vec![0u8; length.min(64 << 20)];
    if reader.read_exact(&mut body).is_err() {
        return reject(&mut stream, 500, "body shorter than Content-Length".into());
    }
    let behaviour = state.lock().unwrap().behaviour;
    match behaviour {
        Behaviour::Hang => {
            // Hold the connection, answering nothing, until told otherwise or the peer leaves.
            let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
            let mut byte = [0u8; 1];
            while state.lock().unwrap().behaviour == Behaviour::Hang && !stop.load(Ordering::SeqCst)
            {
                match stream.read(&mut byte) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut => {}
                    Err(_) => return,
                }
            }
            return;
        }
        Behaviour::Status(code) => return respond(&mut stream, code, "{\"error\": \"on demand\"}"),
        Behaviour::Trickle => {
            let answer = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
            for byte in answer {
                if state.lock().unwrap().behaviour != Behaviour::Trickle
                    || stop.load(Ordering::SeqCst)
                    || stream.write_all(&[*byte]).is_err()
                {
                    return;
                }
                thread::sleep(Duration::from_secs(1));
            }
            return;
        }
        Behaviour::Reset => {
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Le");
            let _ = stream.flush();
            // SO_LINGER 0: close sends RST instead of FIN.
            let _ = nix::sys::socket::setsockopt(
                &stream,
                nix::sys::socket::sockopt::Linger,
                &nix::libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            );
            return;
        }
        Behaviour::Accept | Behaviour::Down | Behaviour::Refuse => {}
    }
    if path != "/replies" {
        return reject(&mut stream, 404, format!("path {path} is not /replies"));
    }
    match header("content-type") {
        Some(ct) if ct.contains("application/json") => {}
        other => return reject(&mut stream, 400, format!("Content-Type {other:?}")),
    }
    if let Some(pos) = body.iter().position(|b| *b > 0x7f) {
        return reject(&mut stream, 500, format!("non-ASCII byte at offset {pos}"));
    }
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return reject(&mut stream, 400, format!("JSON does not parse: {e}")),
    };
    let Some(object) = value.as_object() else {
        return reject(&mut stream, 400, "JSON is not an object".into());
    };
    let key = |k: &str| {
        object
            .iter()
            .find(|(name, _)| name.to_lowercase() == k)
            .and_then(|(_, v)| v.as_str().map(str::to_string))
    };
    match (key("name"), key("reply")) {
        (Some(name), Some(reply)) => {
            state.lock().unwrap().received.push(Received {
                name,
                reply,
                body: String::from_utf8_lossy(&body).into_owned(),
                at_ns: monotonic_ns(),
            });
            respond(&mut stream, 200, "");
        }
        _ => reject(&mut stream, 400, "name or reply missing".into()),
    }
}

/// A temporary directory (mode 0755) removed on drop.
pub struct TestDir {
    /// Its path.
    pub path: PathBuf,
}

impl TestDir {
    /// A fresh, empty directory under the system temp dir.
    pub fn new(label: &str) -> TestDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "smtp_bridge-test-{label}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        TestDir { path }
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Writes `dir/smtp_bridge.conf` (mode 0644) pointing at `bridge_url`, with the spool at
/// `dir/spool`, name and hostname `testhost`, debug logging, followed by `extra` TOML lines.
/// Returns the config file's path.
pub fn write_config(dir: &Path, bridge_url: &str, extra: &str) -> PathBuf {
    let path = dir.join("smtp_bridge.conf");
    let text = format!(
        "queue = \"{bridge_url}\"\nname = \"testhost\"\nhostname = \"testhost\"\nloglevel = \"debug\"\nspool_dir = \"{}\"\n{extra}\n",
        dir.join("spool").display()
    );
    std::fs::write(&path, text).expect("write config");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

/// The built `sendmail` shim.
pub fn sendmail_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sendmail"))
}

/// The built daemon.
pub fn daemon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_smtp_bridge"))
}

/// `../shared` (found by walking up from the crate root until `shared/DESIGN.md` exists).
pub fn shared_dir() -> PathBuf {
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let candidate = dir.join("shared");
        if candidate.join("DESIGN.md").is_file() {
            return candidate;
        }
        if !dir.pop() {
            panic!("no shared/DESIGN.md above {}", env!("CARGO_MANIFEST_DIR"));
        }
    }
}

/// Whether running under CI (`CI=true`).
pub fn under_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Whether `tool` is on PATH. When it is not: under CI the test fails (a missing tool must
/// not pass silently); elsewhere the test is skipped with a line on stderr.
pub fn require_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        if under_ci() {
            panic!("{tool} is required for this test under CI (install it in .ci/run)");
        }
        eprintln!("SKIP: {tool} not installed");
    }
    found
}

/// Whether we run as root. When not: under CI the test fails; elsewhere it is skipped.
pub fn require_root() -> bool {
    let root = nix_euid_is_root();
    if !root {
        if under_ci() {
            panic!("this test needs root under CI");
        }
        eprintln!("SKIP: not root");
    }
    root
}

fn nix_euid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// A loopback port that was free a moment ago, for a daemon the test starts.
///
/// Taken below the kernel's ephemeral range (32768-60999 on Linux), and never twice in one
/// test process: a port from the ephemeral range can be handed to some other test's
/// outgoing connection between this check and the daemon's bind, which then fails with
/// "address in use" and the test flakes.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU16;
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Each test process starts at its own place in the range, so concurrent test binaries
    // (cargo runs them one after another, but people run them side by side) rarely meet.
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = LOW + (start.wrapping_add(n) % SPAN);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

/// Polls `cond` every 10 ms until it holds; false when `timeout` passed first.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Asserts that `text` contains each of `needles`; shows `text` when one is missing.
#[track_caller]
pub fn assert_contains(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
}
