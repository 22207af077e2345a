//! Dropping root after the listeners are bound, and proving it is gone.
//!
//! The daemon is started as root only so that it can bind port 25 and give the spool to its
//! unprivileged user. The order is fixed (OpenSMTPD's `dispatcher.c`, dma): look the target
//! up ([`Target::lookup`]) while `/etc/passwd` is still readable, then [`drop_to`]:
//! `setgroups([])`, `setresgid`, `setresuid`, `PR_SET_NO_NEW_PRIVS`, and finally [`verify`]
//! reads every id back and checks that `setuid(0)` fails. Any failure is fatal before the
//! first client is served (the binary exits 77). All of it must run before any thread is
//! spawned, so that every thread of the process carries the same credentials.

use nix::errno::Errno;
use nix::unistd::{Gid, Group, Uid, User};

/// The group used when the configuration names none that exists: Debian's `nogroup`.
const FALLBACK_GROUP: &str = "nogroup";

/// Why the daemon could not become (or prove it became) its unprivileged user.
#[derive(Debug)]
#[non_exhaustive]
pub enum PrivilegeError {
    /// Occurs when the configured user has no passwd entry.
    UnknownUser {
        /// The configured `username`.
        user: String,
    },
    /// Occurs when the configured user would be root itself, which defeats the drop.
    RootTarget {
        /// The configured `username`.
        user: String,
    },
    /// Occurs when the group the daemon would run with is gid 0 (`root`): group-writable
    /// root files and directories would stay writable, which defeats the drop as much as
    /// uid 0 would.
    RootGroup {
        /// The configured `username`.
        user: String,
        /// The group that resolved to gid 0 (the configured one, or the user's primary).
        group: String,
    },
    /// Occurs when the passwd or group database cannot be read.
    Lookup {
        /// The name being looked up.
        name: String,
        /// The cause.
        source: Errno,
    },
    /// Occurs when one of the system calls of the drop fails.
    Syscall {
        /// Which call (`setgroups`, `setresgid`, `setresuid`, `prctl`).
        call: &'static str,
        /// The cause.
        source: Errno,
    },
    /// Occurs when reading the credentials back shows that the drop did not take effect.
    Verification {
        /// What was found.
        message: String,
    },
}

impl std::fmt::Display for PrivilegeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrivilegeError::UnknownUser { user } => write!(f, "unknown user {user:?}"),
            PrivilegeError::RootTarget { user } => {
                write!(f, "user {user:?} has uid 0; refusing to run as root")
            }
            PrivilegeError::RootGroup { user, group } => write!(
                f,
                "group {group:?} of user {user:?} has gid 0; refusing to run with the root group"
            ),
            PrivilegeError::Lookup { name, .. } => write!(f, "cannot look up {name:?}"),
            PrivilegeError::Syscall { call, .. } => write!(f, "{call} failed"),
            PrivilegeError::Verification { message } => {
                write!(f, "privilege drop not verified: {message}")
            }
        }
    }
}

impl std::error::Error for PrivilegeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PrivilegeError::Lookup { source, .. } | PrivilegeError::Syscall { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}

/// Whom the daemon becomes: resolved ids plus the names, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The user name.
    pub user: String,
    /// The group name actually used (the configured one, or the user's primary group).
    pub group: String,
    /// The user's uid.
    pub uid: u32,
    /// The gid to run with.
    pub gid: u32,
}

impl Target {
    /// Resolves `username` and `group`. When `group` does not exist and is the default
    /// `nogroup` (or any name, on a system without it), the user's primary group is used,
    /// as DESIGN.md asks ("`nogroup` or nobody's primary group").
    pub fn lookup(username: &str, group: &str) -> Result<Target, PrivilegeError> {
        let user = User::from_name(username)
            .map_err(|source| PrivilegeError::Lookup {
                name: username.to_owned(),
                source,
            })?
            .ok_or_else(|| PrivilegeError::UnknownUser {
                user: username.to_owned(),
            })?;
        if user.uid.is_root() {
            return Err(PrivilegeError::RootTarget {
                user: username.to_owned(),
            });
        }
        let wanted = if group.is_empty() {
            FALLBACK_GROUP
        } else {
            group
        };
        let found = Group::from_name(wanted).map_err(|source| PrivilegeError::Lookup {
            name: wanted.to_owned(),
            source,
        })?;
        let (group_name, gid) = match found {
            Some(g) => (g.name, g.gid),
            None => {
                // No such group: fall back to the user's own primary group, named when the
                // group database knows it.
                let name = Group::from_gid(user.gid)
                    .ok()
                    .flatten()
                    .map(|g| g.name)
                    .unwrap_or_else(|| user.gid.to_string());
                (name, user.gid)
            }
        };
        if gid.as_raw() == 0 {
            return Err(PrivilegeError::RootGroup {
                user: username.to_owned(),
                group: group_name,
            });
        }
        Ok(Target {
            user: user.name,
            group: group_name,
            uid: user.uid.as_raw(),
            gid: gid.as_raw(),
        })
    }
}

/// Whether the process runs with effective uid 0 (so it must drop).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Becomes `target` for good: no supplementary groups, real, effective and saved gid and uid
/// set, no new privileges through exec; then [`verify`]. Call before spawning any thread.
pub fn drop_to(target: &Target) -> Result<(), PrivilegeError> {
    let uid = Uid::from_raw(target.uid);
    let gid = Gid::from_raw(target.gid);
    // Groups first, then gid, then uid: once the uid is gone we could no longer change the
    // others.
    nix::unistd::setgroups(&[]).map_err(|source| PrivilegeError::Syscall {
        call: "setgroups",
        source,
    })?;
    nix::unistd::setresgid(gid, gid, gid).map_err(|source| PrivilegeError::Syscall {
        call: "setresgid",
        source,
    })?;
    nix::unistd::setresuid(uid, uid, uid).map_err(|source| PrivilegeError::Syscall {
        call: "setresuid",
        source,
    })?;
    nix::sys::prctl::set_no_new_privs().map_err(|source| PrivilegeError::Syscall {
        call: "prctl(PR_SET_NO_NEW_PRIVS)",
        source,
    })?;
    verify(target)
}

/// Reads the credentials back and fails unless they are exactly `target`'s: real, effective
/// and saved ids, no supplementary groups, no_new_privs set, and `setuid(0)` refused.
pub fn verify(target: &Target) -> Result<(), PrivilegeError> {
    let bad = |message: String| PrivilegeError::Verification { message };
    let uids = nix::unistd::getresuid().map_err(|source| PrivilegeError::Syscall {
        call: "getresuid",
        source,
    })?;
    let gids = nix::unistd::getresgid().map_err(|source| PrivilegeError::Syscall {
        call: "getresgid",
        source,
    })?;
    let ids = [uids.real, uids.effective, uids.saved];
    if ids.iter().any(|u| u.as_raw() != target.uid) {
        return Err(bad(format!(
            "uids are {}/{}/{}, expected {}",
            uids.real, uids.effective, uids.saved, target.uid
        )));
    }
    let ids = [gids.real, gids.effective, gids.saved];
    if ids.iter().any(|g| g.as_raw() != target.gid) {
        return Err(bad(format!(
            "gids are {}/{}/{}, expected {}",
            gids.real, gids.effective, gids.saved, target.gid
        )));
    }
    let groups = nix::unistd::getgroups().map_err(|source| PrivilegeError::Syscall {
        call: "getgroups",
        source,
    })?;
    if !groups.is_empty() {
        return Err(bad(format!("{} supplementary groups remain", groups.len())));
    }
    match nix::sys::prctl::get_no_new_privs() {
        Ok(true) => {}
        Ok(false) => return Err(bad("no_new_privs is not set".to_owned())),
        Err(source) => {
            return Err(PrivilegeError::Syscall {
                call: "prctl(PR_GET_NO_NEW_PRIVS)",
                source,
            })
        }
    }
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        return Err(bad("setuid(0) succeeded".to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_user_is_an_error() {
        let err = Target::lookup("no-such-user-smtp-bridge", "nogroup").unwrap_err();
        assert!(matches!(err, PrivilegeError::UnknownUser { .. }), "{err}");
    }

    #[test]
    fn root_is_refused_as_target() {
        let err = Target::lookup("root", "root").unwrap_err();
        assert!(matches!(err, PrivilegeError::RootTarget { .. }), "{err}");
    }

    #[test]
    fn root_group_is_refused_as_target() {
        // Every Debian box has group `root` with gid 0.
        let err = Target::lookup("nobody", "root").unwrap_err();
        assert!(
            matches!(&err, PrivilegeError::RootGroup { group, .. } if group == "root"),
            "{err}"
        );
        assert!(err.to_string().contains("gid 0"), "{err}");
    }

    #[test]
    fn missing_group_falls_back_to_primary_group() {
        let nobody = User::from_name("nobody").unwrap().unwrap();
        let t = Target::lookup("nobody", "no-such-group-smtp-bridge").unwrap();
        assert_eq!(t.uid, nobody.uid.as_raw());
        assert_eq!(t.gid, nobody.gid.as_raw());
    }

    #[test]
    fn existing_group_is_used() {
        let t = Target::lookup("nobody", "nogroup").unwrap();
        let g = Group::from_name("nogroup").unwrap().unwrap();
        assert_eq!(t.gid, g.gid.as_raw());
        assert_eq!(t.group, "nogroup");
    }

    #[test]
    fn verify_fails_for_someone_else() {
        // Whoever runs the tests is not uid 4242 with gid 4242.
        let t = Target {
            user: "x".into(),
            group: "x".into(),
            uid: 4242,
            gid: 4242,
        };
        assert!(verify(&t).is_err());
    }
}
