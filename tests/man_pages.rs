//! The manual pages are part of the interface: they must be clean mdoc, and they must name
//! every configuration key (with its real default), every option of the daemon's `--help`
//! and every option the `sendmail` parser knows, in the section that says what it does.
//! The lists come from the code, so a key or option added there without its documentation
//! fails here.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn man_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("man")
}

const PAGES: &[&str] = &["smtp_bridge.8", "sendmail.8", "smtp_bridge.conf.5"];

fn source(page: &str) -> String {
    std::fs::read_to_string(man_dir().join(page)).unwrap_or_else(|e| panic!("man/{page}: {e}"))
}

/// The page as a reader sees it: rendered by mandoc, without overstrike.
fn rendered(page: &str) -> String {
    let out = Command::new("mandoc")
        .args(["-Tascii", "-Owidth=200"])
        .arg(man_dir().join(page))
        .output()
        .expect("run mandoc");
    assert!(out.status.success(), "mandoc cannot render {page}");
    // Remove backspace overstrike (bold `X\bX`, underline `_\bX`).
    let mut text = String::new();
    for c in String::from_utf8_lossy(&out.stdout).chars() {
        if c == '\u{8}' {
            text.pop();
        } else {
            text.push(c);
        }
    }
    text
}

/// The source lines of one `.Ss` subsection (up to the next `.Ss` or `.Sh`).
fn subsection<'a>(src: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = src.lines().skip_while(|l| *l != format!(".Ss {title}"));
    assert!(
        lines.next().is_some(),
        "no subsection `.Ss {title}` in the page"
    );
    lines
        .take_while(|l| !l.starts_with(".Ss ") && !l.starts_with(".Sh "))
        .collect()
}

/// The options named by `Fl` on the `.It` lines of some mdoc source: `.It Fl i , Fl oi`
/// gives `-i` and `-oi`, `.It Fl -config Ar path` gives `--config`, `.It Fl -` gives `--`.
fn item_options(lines: &[&str]) -> Vec<String> {
    let mut options = Vec::new();
    for line in lines.iter().filter(|l| l.starts_with(".It ")) {
        let words: Vec<&str> = line.split_whitespace().collect();
        for (i, word) in words.iter().enumerate() {
            if *word != "Fl" {
                continue;
            }
            match words.get(i + 1) {
                Some(next) if !is_macro(next) && *next != "," => options.push(format!("-{next}")),
                _ => options.push("-".to_owned()),
            }
        }
    }
    options
}

fn is_macro(word: &str) -> bool {
    word.len() == 2
        && word.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && word.chars().nth(1).is_some_and(|c| c.is_ascii_lowercase())
}

#[test]
fn pages_are_clean_under_mandoc_lint() {
    if !common::require_tool("mandoc") {
        return;
    }
    for page in PAGES {
        let out = Command::new("mandoc")
            .args(["-Tlint", "-W", "warning"])
            .arg(man_dir().join(page))
            .output()
            .expect("run mandoc -Tlint");
        let messages = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Only the "outdated mandoc.db" notes of the host's database may remain; they are
        // about the machine, not the page.
        let findings: Vec<&str> = messages
            .lines()
            .filter(|l| !l.contains("mandoc.db"))
            .collect();
        assert!(
            out.status.success() && findings.is_empty(),
            "mandoc -Tlint man/{page}:\n{}",
            findings.join("\n")
        );
        assert!(
            rendered(page).contains("NAME"),
            "{page} renders without a NAME section"
        );
    }
}

/// What `man -l` does with the pages (groff's mdoc macros, not mandoc's): they must render,
/// without a single groff warning.
#[test]
fn pages_render_with_man_and_groff_without_warnings() {
    if !common::require_tool("man") {
        return;
    }
    for page in PAGES {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(man_dir().join(page))
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .expect("run man -l");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "man -l man/{page}: {:?}\n{stderr}",
            out.status
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("NAME") && text.lines().count() > 50,
            "man -l man/{page} rendered almost nothing:\n{text}"
        );
    }
}

/// `key = value` pairs of `Config::default().to_toml()`.
fn default_settings() -> Vec<(String, String)> {
    let toml = smtp_bridge::config::Config::default().to_toml();
    let pairs: Vec<(String, String)> = toml
        .lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    assert!(
        pairs.len() >= 10,
        "to_toml printed too few keys to be the configuration:\n{toml}"
    );
    pairs
}

/// Ignores the spelling differences between TOML and the rendered page: quotes of either
/// kind and spaces.
fn normalise(value: &str) -> String {
    value
        .chars()
        .filter(|c| !matches!(c, '"' | '\'' | '`' | ' '))
        .collect()
}

#[test]
fn config_page_documents_every_key_with_its_real_default() {
    if !common::require_tool("mandoc") {
        return;
    }
    let settings = default_settings();
    let text = rendered("smtp_bridge.conf.5");
    let defaults = smtp_bridge::config::Config::default();
    for (key, value) in &settings {
        // "key (type, default)" at the start of a tag line.
        let head = format!("{key} (");
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(&head))
            .unwrap_or_else(|| panic!("smtp_bridge.conf.5 has no \"{key} (type, default)\" entry"));
        let inside = line[head.len()..]
            .strip_suffix(')')
            .unwrap_or_else(|| panic!("entry line not closed: {line}"));
        let (_, shown) = inside
            .split_once(", ")
            .unwrap_or_else(|| panic!("entry without a default: {line}"));
        // The host name is the machine's, so the page says so in words.
        let host_dependent = value.trim_matches('"') == defaults.hostname
            || value.trim_matches('"') == defaults.name;
        if host_dependent {
            assert_eq!(shown, "the host name", "{key}");
        } else {
            assert_eq!(
                normalise(shown),
                normalise(value),
                "smtp_bridge.conf.5 gives {key} the default {shown}, the code {value}"
            );
        }
    }
}

#[test]
fn config_page_example_of_the_defaults_matches_the_code() {
    let settings = default_settings();
    let src = source("smtp_bridge.conf.5");
    // The first literal display of EXAMPLES writes the defaults out.
    let examples = src
        .split(".Sh EXAMPLES")
        .nth(1)
        .expect("smtp_bridge.conf.5 has EXAMPLES");
    let block: Vec<&str> = examples
        .lines()
        .skip_while(|l| !l.starts_with(".Bd -literal"))
        .skip(1)
        .take_while(|l| *l != ".Ed")
        .collect();
    assert!(!block.is_empty(), "no literal example of the defaults");
    for line in block {
        let (key, value) = line.split_once(" = ").expect("key = value");
        let code = settings
            .iter()
            .find(|(k, _)| k == key)
            .unwrap_or_else(|| panic!("example names {key}, which the code does not know"));
        assert_eq!(value, code.1, "example default of {key}");
    }
}

#[test]
fn daemon_page_documents_every_option_of_help() {
    let out = Command::new(common::daemon_bin())
        .arg("--help")
        .output()
        .expect("run smtp_bridge --help");
    assert!(out.status.success(), "smtp_bridge --help failed");
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    let mut options: Vec<String> = help
        .split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']' || c == '=')
        .filter(|w| w.starts_with('-') && w.len() > 1 && !w.starts_with("---"))
        .map(|w| w.trim_end_matches(['.', ':', ')']).to_owned())
        .collect();
    options.sort();
    options.dedup();
    for must in [
        "--config",
        "--loglevel",
        "--check-config",
        "--version",
        "--help",
    ] {
        assert!(
            options.iter().any(|o| o == must),
            "{must} missing from --help:\n{help}"
        );
    }
    let page = source("smtp_bridge.8");
    let documented = item_options(&page.lines().collect::<Vec<_>>());
    for option in &options {
        assert!(
            documented.contains(option),
            "smtp_bridge.8 has no `.It Fl {}` for {option} of --help",
            &option[1..]
        );
    }
    // And the other way: the page documents no option that --help (whose every form the
    // parser's unit tests take) does not list.
    for option in &documented {
        assert!(
            options.contains(option),
            "smtp_bridge.8 documents {option}, which --help does not list:\n{help}"
        );
    }
}

/// Every option the parser honours, ignores or refuses, each in the section of sendmail(8)
/// that says so, and nowhere else among the tags.
#[test]
fn sendmail_page_documents_every_option_where_the_code_puts_it() {
    use smtp_bridge::sendmail::{HONOURED_OPTIONS, IGNORED_OPTIONS, REJECTED_OPTIONS};
    let src = source("sendmail.8");
    let honoured = item_options(&subsection(&src, "Options that take effect"));
    let ignored = item_options(&subsection(&src, "Options accepted and ignored"));
    for option in HONOURED_OPTIONS {
        assert!(
            honoured.iter().any(|o| o == option),
            "sendmail.8 has no `.It Fl {}` under \"Options that take effect\"",
            &option[1..]
        );
        assert!(
            !ignored.iter().any(|o| o == option),
            "{option} is honoured, but sendmail.8 lists it as ignored"
        );
    }
    for option in IGNORED_OPTIONS {
        assert!(
            ignored.iter().any(|o| o == option),
            "sendmail.8 has no `.It Fl {}` under \"Options accepted and ignored\"",
            &option[1..]
        );
    }
    // Documented as taking effect or ignored, but unknown to the code: the page lies.
    for option in honoured.iter().chain(&ignored) {
        assert!(
            HONOURED_OPTIONS.contains(&option.as_str())
                || IGNORED_OPTIONS.contains(&option.as_str()),
            "sendmail.8 documents {option}, which the parser does not list"
        );
    }
    let refused = subsection(&src, "Modes refused").join(" ");
    for option in REJECTED_OPTIONS {
        assert!(
            refused.contains(&format!("Fl {}", &option[1..])),
            "{option} is refused by the code but not under \"Modes refused\""
        );
    }
}

#[test]
fn item_options_reads_mdoc_tags() {
    let lines = [
        ".It Fl i , Fl oi",
        ".It Fl -config Ar path",
        ".It Fl -",
        ".It Fl e Ns Ar x",
        ".It Pa maildrop/",
    ];
    assert_eq!(item_options(&lines), ["-i", "-oi", "--config", "--", "-e"]);
}
