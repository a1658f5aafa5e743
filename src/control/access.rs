//! Who may talk to the daemon: groups named on the command line, and the peer credentials of a
//! control connection (SO_PEERCRED), checked on top of the socket file's mode so that a
//! socket loosened by hand (or by a umask) still answers only root, the daemon's own user and
//! the granted group.

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

/// A group id, as resolved from `--control-group` or `--socket-group`.
pub type Gid = u32;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("there is no group {0:?}")]
    NoGroup(String),
    #[error("cannot look up group {name:?}: {source}")]
    GroupLookup { name: String, source: io::Error },
    #[error("cannot read the peer credentials of a control client: {0}")]
    PeerCredentials(#[source] io::Error),
    #[error("uid {uid} (gid {gid}) may not use this control socket")]
    Denied { uid: u32, gid: u32 },
}

/// Resolves a group given by name, or by number.
pub fn resolve_group(name: &str) -> Result<Gid, AccessError> {
    if let Ok(gid) = name.parse::<Gid>() {
        return Ok(gid);
    }
    let c_name = CString::new(name).map_err(|_| AccessError::NoGroup(name.into()))?;
    let mut buffer = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: group is plain data that getgrnam_r fills; zeroed is a valid value for it.
    let mut group: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: the NUL-terminated name, the group struct,
    // the buffer with its true length and the result pointer; getgrnam_r writes only there.
    let rc = unsafe {
        libc::getgrnam_r(
            c_name.as_ptr(),
            &mut group,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if rc != 0 {
        return Err(AccessError::GroupLookup {
            name: name.into(),
            source: io::Error::from_raw_os_error(rc),
        });
    }
    if found.is_null() {
        return Err(AccessError::NoGroup(name.into()));
    }
    Ok(group.gr_gid)
}

/// The credentials of the process at the other end of a Unix stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

pub fn peer_of(stream: &UnixStream) -> Result<Peer, AccessError> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the fd is a live socket owned by `stream`; `cred` and `len` are valid for
    // writes and `len` holds the size of `cred`, so the kernel writes within it.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(AccessError::PeerCredentials(io::Error::last_os_error()));
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Whether a peer may use the control socket: root, the daemon's own user, or (with
/// `--control-group`) a member of that group, by its primary or a supplementary group.
pub fn control_allowed(peer: Peer, group: Option<Gid>) -> Result<(), AccessError> {
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    if peer.uid == 0 || peer.uid == own {
        return Ok(());
    }
    if let Some(group) = group
        && (peer.gid == group || supplementary_groups(peer.pid).contains(&group))
    {
        return Ok(());
    }
    Err(AccessError::Denied {
        uid: peer.uid,
        gid: peer.gid,
    })
}

/// The supplementary groups of a process, from /proc (empty if it cannot be read: the
/// process has gone, so it is not let in by a group it may not have had).
fn supplementary_groups(pid: i32) -> Vec<Gid> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Vec::new();
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|groups| {
            groups
                .split_whitespace()
                .filter_map(|g| g.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_resolve_by_name_and_number_and_unknown_ones_are_refused() {
        assert_eq!(resolve_group("0").unwrap(), 0);
        assert_eq!(resolve_group("root").unwrap(), 0);
        assert!(matches!(
            resolve_group("no-such-group-prism"),
            Err(AccessError::NoGroup(_))
        ));
    }

    #[test]
    fn root_and_the_own_user_are_allowed_others_only_through_the_group() {
        // SAFETY: geteuid has no preconditions.
        let own = unsafe { libc::geteuid() };
        let peer = |uid, gid| Peer {
            pid: i32::MAX,
            uid,
            gid,
        };
        assert!(control_allowed(peer(0, 0), None).is_ok());
        assert!(control_allowed(peer(own, 12345), None).is_ok());
        assert!(control_allowed(peer(54321, 777), None).is_err());
        assert!(control_allowed(peer(54321, 777), Some(778)).is_err());
        assert!(control_allowed(peer(54321, 777), Some(777)).is_ok());
    }

    #[test]
    fn a_peer_is_read_from_its_socket() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = peer_of(&a).unwrap();
        assert_eq!(peer.pid, std::process::id() as i32);
    }
}
