//! A maildrop file written by an untrusted local user: whatever its bytes, ingestion either
//! queues it (the origin then is the file owner's uid, never what the header claims, the
//! arrival is not in the future, the full name is bounded, and the queued message is the
//! file's tail byte for byte)
//! or refuses it, and never panics. Byte 0 picks the entry's name (plain, or one that asks
//! for a queue ID); the rest is the file. The spool lives on /dev/shm when it exists.
#![no_main]

use std::fs;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::SystemTime;

use libfuzzer_sys::fuzz_target;
use smtp_bridge::envelope::{Origin, MAX_FULL_NAME};
use smtp_bridge::spool::Spool;

/// Messages over this are refused.
const MAX_SIZE: u64 = 64 * 1024;

fn spool() -> &'static Spool {
    static SPOOL: OnceLock<Spool> = OnceLock::new();
    SPOOL.get_or_init(|| {
        let base = if fs::metadata("/dev/shm").is_ok() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        // libFuzzer ends the process with exit(), so a spool cannot remove itself: each run
        // removes those of runs that are gone.
        const PREFIX: &str = "smtp_bridge-fuzz-spool-";
        for entry in fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(PREFIX) {
                if !PathBuf::from(format!("/proc/{pid}")).exists() {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        let root = base.join(format!("{PREFIX}{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).expect("spool root");
        let spool = Spool::new(root);
        spool.prepare(None).expect("prepare spool");
        spool
    })
}

fn clear(dir: PathBuf) {
    for entry in fs::read_dir(dir).expect("read dir").flatten() {
        let _ = fs::remove_file(entry.path());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, file)) = data.split_first() else {
        return;
    };
    let spool = spool();
    let root = spool.root().to_path_buf();
    let name = match selector % 4 {
        0 => "entry".to_string(),
        // A name that asks to keep a queue ID (only a valid one, not in the future, is kept).
        1 => "0000000000000001.x".to_string(),
        2 => "FFFFFFFFFFFFFFFF.x".to_string(),
        _ => format!("{:016X}.x", selector as u64 * 0x0101_0101_0101),
    };
    fs::write(root.join("maildrop").join(&name), file).expect("write maildrop entry");
    let before = SystemTime::now();
    let report = spool.ingest_maildrop(MAX_SIZE).expect("ingest");
    assert_eq!(report.accepted + report.refused, 1, "{report:?}");
    assert!(
        fs::read_dir(root.join("maildrop"))
            .expect("maildrop")
            .flatten()
            .all(|e| e.file_name().to_string_lossy().starts_with('.')),
        "entry left in maildrop/"
    );
    let entries = spool.list().expect("list");
    assert_eq!(entries.len(), report.accepted, "{entries:?}");
    for entry in entries {
        let uid = nix::unistd::geteuid().as_raw();
        assert!(
            matches!(entry.envelope.origin, Origin::Local { uid: u, .. } if u == uid),
            "origin taken from the header: {:?}",
            entry.envelope.origin
        );
        assert!(entry.envelope.arrival <= SystemTime::now().max(before));
        // The full name (`sendmail -F`) is the sender's word, but bounded.
        assert!(entry.envelope.origin.full_name().map_or(0, str::len) <= MAX_FULL_NAME);
        let (_, bytes) = spool.read(&entry.id, usize::MAX).expect("read");
        assert_eq!(bytes.len() as u64, entry.size);
        assert!(entry.size <= MAX_SIZE);
        assert!(
            file.ends_with(&bytes),
            "queued bytes are not the file's tail"
        );
        spool.remove(&entry.id).expect("remove");
    }
    clear(root.join("failed"));
});
