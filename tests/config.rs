//! The configuration as the binaries read it: real files in a temporary directory, in both
//! formats, with their errors, their permissions, and the shipped example.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestDir;
use smtp_bridge::config::{Config, ConfigError, LogLevel, DEFAULT_PATH, KEYS};

/// Writes `text` to `dir/name` with `mode`.
fn write(dir: &TestDir, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp_bridge.conf.example")
}

/// The field names of [`Config`], read from its `Debug` form so that a field added to the
/// struct without being documented makes these tests fail.
fn config_fields() -> Vec<String> {
    format!("{:#?}", Config::default())
        .lines()
        .filter(|l| l.starts_with("    ") && !l.starts_with("     "))
        .filter_map(|l| l.trim().split_once(':').map(|(k, _)| k.to_owned()))
        .collect()
}

#[test]
fn keys_list_matches_the_struct() {
    let mut fields = config_fields();
    let mut keys: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
    fields.sort();
    keys.sort();
    assert_eq!(fields, keys);
}

#[test]
fn loads_a_toml_file() {
    let dir = TestDir::new("config-toml");
    let path = common::write_config(
        &dir.path,
        "http://127.0.0.1:9/replies",
        "listen = [\"127.0.0.1:2525\"]\nmax_message_size = 1000\nsendmail_timeout = 2\n",
    );
    let c = Config::load(&path).unwrap();
    assert_eq!(c.queue, "http://127.0.0.1:9/replies");
    assert_eq!(c.name, "testhost");
    assert_eq!(c.hostname, "testhost");
    assert_eq!(c.loglevel, LogLevel::Debug);
    assert_eq!(c.spool_dir, dir.join("spool"));
    assert_eq!(
        c.listen,
        vec!["127.0.0.1:2525".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(c.max_message_size, 1000);
    assert_eq!(c.sendmail_timeout, Duration::from_secs(2));
    assert_eq!(c.max_recipients, 1000, "unset keys keep their defaults");
    // locate() with an explicit path reads the same file.
    assert_eq!(Config::locate(Some(&path)).unwrap(), c);
}

#[test]
fn loads_the_python_originals_file_unchanged() {
    let dir = TestDir::new("config-ini");
    let text = "\
# This is the configuration file for smtp_bridge.py.
[DEFAULT]

# URL of the message queue to send to.
queue = http://localhost:8003/replies

; Loglevels: CRITICAL, ERROR, WARNING, INFO, DEBUG
loglevel = WARNING

# Where to listen.
smtphost = localhost
smtpport = 2525

# Whom to run as.
username = nobody
group = nogroup
";
    let path = write(&dir, "smtp_bridge.conf", text, 0o644);
    let c = Config::load(&path).unwrap();
    assert_eq!(c.queue, "http://localhost:8003/replies");
    assert_eq!(c.loglevel, LogLevel::Warning);
    assert_eq!(
        c.listen,
        vec![
            "127.0.0.1:2525".parse::<SocketAddr>().unwrap(),
            "[::1]:2525".parse().unwrap()
        ]
    );
    assert_eq!(c.username, "nobody");
    assert_eq!(c.group, "nogroup");
    assert_eq!(c.spool_dir, Config::default().spool_dir);
}

/// Every error from a file names the file, the line and the key, on one line.
#[test]
fn errors_from_files_name_file_key_and_line() {
    let dir = TestDir::new("config-errors");
    let table: &[(&str, &str, usize)] = &[
        (
            "queue = \"http://x/replies\"\n\nlisten_on = [\"127.0.0.1:25\"]\n",
            "listen_on",
            3,
        ),
        ("# sizes\nmax_message_size = 0\n", "max_message_size", 2),
        ("max_connections = \"many\"\n", "max_connections", 1),
        ("idle_timeout = 1.5\n", "idle_timeout", 1),
        ("name = \"x\"\nqueue = \"gopher://x/replies\"\n", "queue", 2),
        (
            "allowed_clients = [\"127.0.0.0/8\", \"::1/200\"]\n",
            "allowed_clients",
            1,
        ),
        ("listen = [\"localhost:25\"]\n", "listen", 1),
        ("loglevel = \"verbose\"\n", "loglevel", 1),
        ("strict_recipients = 1\n", "strict_recipients", 1),
        (
            "[DEFAULT]\nqueue = http://x/replies\nsmtpport = twenty-five\n",
            "smtpport",
            3,
        ),
        (
            "[DEFAULT]\nloglevel = INFO\nsmtp_host = localhost\n",
            "smtp_host",
            3,
        ),
        ("# old file\n[DEFAULT]\nloglevel = LOUD\n", "loglevel", 3),
    ];
    for (i, (text, key, line)) in table.iter().enumerate() {
        let path = write(&dir, &format!("bad{i}.conf"), text, 0o600);
        let err = Config::load(&path).unwrap_err();
        match &err {
            ConfigError::Invalid {
                path: Some(p),
                line: Some(l),
                message,
            } => {
                assert_eq!(p, &path);
                assert_eq!(l, line, "{text:?}: {message}");
                assert!(message.contains(key), "{text:?}: {message}");
            }
            other => panic!("{text:?}: expected Invalid with path and line, got {other:?}"),
        }
        let shown = err.to_string();
        assert!(shown.contains(&path.display().to_string()), "{shown}");
        assert!(shown.contains(&format!("line {line}")), "{shown}");
        assert!(shown.contains(key), "{shown}");
        assert!(!shown.contains('\n'), "{shown:?}");
    }
}

#[test]
fn writable_by_others_is_refused() {
    let dir = TestDir::new("config-perms");
    let text = "loglevel = \"info\"\n";
    for (mode, ok) in [
        (0o600, true),
        (0o644, true),
        (0o400, true),
        (0o666, false),
        (0o664, false),
        (0o646, false),
        (0o620, false),
    ] {
        let path = write(&dir, &format!("m{mode:o}.conf"), text, mode);
        match Config::load(&path) {
            Ok(_) => assert!(ok, "mode {mode:o} was accepted"),
            Err(ConfigError::Insecure { path: p, message }) => {
                assert!(!ok, "mode {mode:o} refused: {message}");
                assert_eq!(p, path);
                assert!(message.contains("writable"), "{message}");
                assert!(message.contains(&format!("{mode:o}")), "{message}");
            }
            Err(other) => panic!("mode {mode:o}: {other}"),
        }
    }
    // A link to a world-writable file is judged by the file.
    let target = write(&dir, "target.conf", text, 0o666);
    let link = dir.join("link.conf");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(matches!(
        Config::load(&link),
        Err(ConfigError::Insecure { .. })
    ));
}

/// As root, a file owned by another user is refused (without root no such file can be
/// made; the rule itself is also unit-tested in config.rs).
#[test]
fn owned_by_someone_else_is_refused_when_root() {
    if !common::require_root() {
        return;
    }
    let dir = TestDir::new("config-owner");
    let path = write(&dir, "other.conf", "loglevel = \"info\"\n", 0o644);
    nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    match Config::load(&path) {
        Err(ConfigError::Insecure { message, .. }) => {
            assert!(message.contains("65534"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn oversized_file_is_refused() {
    let dir = TestDir::new("config-big");
    let mut text = String::from("loglevel = \"info\"\n");
    while (text.len() as u64) <= smtp_bridge::config::MAX_FILE_SIZE {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    let path = write(&dir, "big.conf", &text, 0o644);
    match Config::load(&path) {
        Err(ConfigError::Invalid { message, .. }) => {
            assert!(message.contains("larger"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_files() {
    let dir = TestDir::new("config-missing");
    let absent = dir.join("absent.conf");
    match Config::locate(Some(&absent)) {
        Err(e @ ConfigError::Io { .. }) => {
            assert!(e.to_string().contains("absent.conf"), "{e}");
            assert!(std::error::Error::source(&e).is_some());
        }
        other => panic!("an explicit file must exist: {other:?}"),
    }
    // Without an explicit file: the default path when it is there, the defaults otherwise.
    let expected = if Path::new(DEFAULT_PATH).exists() {
        Config::load(Path::new(DEFAULT_PATH)).ok()
    } else {
        Some(Config::default())
    };
    assert_eq!(Config::locate(None).ok(), expected);
}

#[test]
fn to_toml_reloads_from_a_file() {
    let dir = TestDir::new("config-roundtrip");
    let path = common::write_config(
        &dir.path,
        "https://bridge.example/replies",
        "allowed_clients = [\"10.0.0.0/8\", \"2001:db8::/32\"]\nstrict_recipients = true\n",
    );
    let c = Config::load(&path).unwrap();
    let again = write(&dir, "again.conf", &c.to_toml(), 0o644);
    assert_eq!(Config::load(&again).unwrap(), c);
}

/// The shipped example parses as it is (every line commented: the defaults) and with its
/// settings uncommented (the same defaults, spelled out), and it shows every key.
#[test]
fn example_file_parses_and_shows_every_key() {
    let text = fs::read_to_string(example_path()).unwrap();
    let mut defaults = Config::default();
    assert_eq!(Config::parse(&text).unwrap(), defaults);

    // Uncomment the TOML settings: lines like `#key = value`.
    let uncommented: String = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest)
                if rest
                    .split_once(" = ")
                    .is_some_and(|(k, _)| KEYS.contains(&k)) =>
            {
                rest
            }
            _ => l,
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let spelled_out = Config::parse(&uncommented).unwrap();
    defaults.name = "myhost".to_owned();
    defaults.hostname = "myhost".to_owned();
    assert_eq!(
        spelled_out, defaults,
        "example values differ from the defaults"
    );

    for key in config_fields() {
        let set = uncommented
            .lines()
            .any(|l| l.starts_with(&format!("{key} = ")));
        assert!(set, "{key} is not shown in smtp_bridge.conf.example");
    }

    // The legacy form shown in the comment block parses as INI.
    let ini: String = text
        .lines()
        .skip_while(|l| l.trim() != "# [DEFAULT]")
        .take_while(|l| l.trim() != "#")
        .map(|l| format!("{}\n", l.trim_start_matches('#').trim()))
        .collect();
    assert!(ini.starts_with("[DEFAULT]\n"), "{ini:?}");
    let legacy = Config::parse(&ini).unwrap();
    assert_eq!(
        legacy.listen,
        vec![
            "127.0.0.1:25".parse::<SocketAddr>().unwrap(),
            "[::1]:25".parse().unwrap()
        ]
    );
    assert_eq!(legacy.group, "nogroup");
}
