//! Socket activation: listening sockets inherited from systemd (or libvirt, or anything that
//! follows sd_listen_fds(3)) instead of bound by prism-vnic.
//!
//! The protocol: descriptors 3, 4, ... (`LISTEN_FDS` of them) are listening sockets meant
//! for the process whose pid is `LISTEN_PID`, named in order by the colon-separated
//! `LISTEN_FDNAMES` (systemd's `FileDescriptorName=`). prism-vnic gives a socket named like
//! a `--port` to that port, one named `control` to the control socket, one named `metrics`
//! to the metrics endpoint. A descriptor that is not a listening stream socket of the right
//! family, or whose name matches nothing, is an error at start: a unit file that does not
//! say what the command line says is a mistake better reported than half served.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// The first inherited descriptor (SD_LISTEN_FDS_START).
pub const LISTEN_FDS_START: RawFd = 3;
/// More inherited sockets than this is not a configuration but a mistake.
const MAX_FDS: usize = 1024;

/// The name of the inherited control socket.
pub const CONTROL: &str = "control";
/// The name of the inherited metrics socket.
pub const METRICS: &str = "metrics";

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("LISTEN_FDS={0:?} is not a count of inherited sockets (0 to {MAX_FDS})")]
    BadCount(String),
    #[error("LISTEN_FDNAMES names {names} sockets but LISTEN_FDS is {count}")]
    NameCount { names: usize, count: usize },
    #[error("inherited descriptor {fd} ({name}) is not usable: {source}")]
    Unusable {
        fd: RawFd,
        name: String,
        source: io::Error,
    },
    #[error("inherited descriptor {fd} ({name}) is not a listening {wanted} stream socket")]
    NotListening {
        fd: RawFd,
        name: String,
        wanted: &'static str,
    },
    #[error("two inherited sockets are named {0:?}")]
    Duplicate(String),
    #[error("inherited socket {name:?} is bound to {actual}, but the command line says {expected}")]
    PathMismatch {
        name: String,
        actual: String,
        expected: PathBuf,
    },
    #[error(
        "inherited socket(s) {0} match no port, nor \"control\" or \"metrics\" \
         (FileDescriptorName= must be a port's name)"
    )]
    Unclaimed(String),
}

/// The sockets inherited by this process, by name, not yet claimed.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: HashMap<String, (RawFd, OwnedFd)>,
}

impl Inherited {
    /// Reads the environment as sd_listen_fds(3) does; no descriptors if `LISTEN_PID` is
    /// absent or another process's.
    pub fn from_env() -> Result<Inherited, ActivationError> {
        let var = |name| std::env::var(name).ok();
        Self::from_vars(
            var("LISTEN_PID").as_deref(),
            var("LISTEN_FDS").as_deref(),
            var("LISTEN_FDNAMES").as_deref(),
            std::process::id(),
        )
    }

    fn from_vars(
        pid: Option<&str>,
        fds: Option<&str>,
        names: Option<&str>,
        own_pid: u32,
    ) -> Result<Inherited, ActivationError> {
        if pid.and_then(|pid| pid.trim().parse::<u32>().ok()) != Some(own_pid) {
            return Ok(Inherited::default());
        }
        let Some(fds) = fds else {
            return Ok(Inherited::default());
        };
        let count: usize = fds
            .trim()
            .parse()
            .ok()
            .filter(|&n| n <= MAX_FDS)
            .ok_or_else(|| ActivationError::BadCount(fds.to_string()))?;
        let names: Vec<String> = match names {
            Some(names) if count > 0 => names.split(':').map(str::to_string).collect(),
            // systemd's name for a socket without FileDescriptorName=.
            _ => vec!["unknown".to_string(); count],
        };
        if names.len() != count {
            return Err(ActivationError::NameCount {
                names: names.len(),
                count,
            });
        }
        let mut sockets = HashMap::new();
        for (index, name) in names.into_iter().enumerate() {
            let fd = LISTEN_FDS_START + index as RawFd;
            // SAFETY: the sd_listen_fds protocol hands descriptors LISTEN_FDS_START to
            // LISTEN_FDS_START + LISTEN_FDS - 1 to this process (LISTEN_PID is ours), and
            // nothing else in prism-vnic has taken them: this runs once, at start, before
            // any file is opened that could have been given those numbers.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let unusable = |source| ActivationError::Unusable {
                fd,
                name: name.clone(),
                source,
            };
            // The protocol leaves them inheritable; nothing prism-vnic starts should have them.
            // SAFETY: fcntl on a descriptor we own, with plain integer arguments.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
                return Err(unusable(io::Error::last_os_error()));
            }
            if sockets.insert(name.clone(), (fd, owned)).is_some() {
                return Err(ActivationError::Duplicate(name));
            }
        }
        Ok(Inherited { sockets })
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Takes the Unix stream listener named `name`, if one was inherited; `path` is where
    /// the command line says it is, which must be where it is bound.
    pub fn take_unix(
        &mut self,
        name: &str,
        path: &Path,
    ) -> Result<Option<UnixListener>, ActivationError> {
        let Some((fd, owned)) = self.sockets.remove(name) else {
            return Ok(None);
        };
        check_listening(fd, name, libc::AF_UNIX, "Unix")?;
        let listener = UnixListener::from(owned);
        let unusable = |source| ActivationError::Unusable {
            fd,
            name: name.to_string(),
            source,
        };
        let address = listener.local_addr().map_err(unusable)?;
        let actual = address.as_pathname().map(Path::to_path_buf);
        let same = actual.as_deref().is_some_and(|actual| {
            actual == path
                || std::fs::canonicalize(actual).ok() == std::fs::canonicalize(path).ok()
                    && actual.exists()
        });
        if !same {
            return Err(ActivationError::PathMismatch {
                name: name.to_string(),
                actual: actual.map_or("an abstract or unnamed address".into(), |p| {
                    p.display().to_string()
                }),
                expected: path.to_path_buf(),
            });
        }
        // The vhost-user and control servers block in accept; a NonBlocking=yes unit
        // would make them spin.
        listener.set_nonblocking(false).map_err(unusable)?;
        Ok(Some(listener))
    }

    /// Takes the TCP listener named `name`, if one was inherited.
    pub fn take_tcp(&mut self, name: &str) -> Result<Option<TcpListener>, ActivationError> {
        let Some((fd, owned)) = self.sockets.remove(name) else {
            return Ok(None);
        };
        check_listening(fd, name, libc::AF_INET, "TCP")
            .or_else(|_| check_listening(fd, name, libc::AF_INET6, "TCP"))?;
        let listener = TcpListener::from(owned);
        listener
            .set_nonblocking(false)
            .map_err(|source| ActivationError::Unusable {
                fd,
                name: name.to_string(),
                source,
            })?;
        Ok(Some(listener))
    }

    /// Fails if any inherited socket was not claimed by a port, the control socket or the
    /// metrics endpoint.
    pub fn finish(self) -> Result<(), ActivationError> {
        if self.sockets.is_empty() {
            return Ok(());
        }
        let mut names: Vec<String> = self.sockets.keys().map(|n| format!("{n:?}")).collect();
        names.sort_unstable();
        Err(ActivationError::Unclaimed(names.join(", ")))
    }
}

fn socket_option(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, an int that outlives the
    // call; `fd` is a descriptor this process owns.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Checks that `fd` is a listening stream socket of `family`.
fn check_listening(
    fd: RawFd,
    name: &str,
    family: libc::c_int,
    wanted: &'static str,
) -> Result<(), ActivationError> {
    let listening = socket_option(fd, libc::SO_DOMAIN).ok() == Some(family)
        && socket_option(fd, libc::SO_TYPE).ok() == Some(libc::SOCK_STREAM)
        && socket_option(fd, libc::SO_ACCEPTCONN).ok() == Some(1);
    if listening {
        Ok(())
    } else {
        Err(ActivationError::NotListening {
            fd,
            name: name.to_string(),
            wanted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_for_another_process_or_none_are_ignored() {
        let none = Inherited::from_vars(None, Some("2"), Some("a:b"), 42).unwrap();
        assert!(none.is_empty());
        let other = Inherited::from_vars(Some("41"), Some("2"), Some("a:b"), 42).unwrap();
        assert!(other.is_empty());
        let zero = Inherited::from_vars(Some("42"), Some("0"), None, 42).unwrap();
        assert!(zero.is_empty());
    }

    #[test]
    fn bad_counts_and_names_say_what_is_wrong() {
        let error = Inherited::from_vars(Some("42"), Some("many"), None, 42).unwrap_err();
        assert!(error.to_string().contains("LISTEN_FDS=\"many\""), "{error}");
        let error = Inherited::from_vars(Some("42"), Some("99999"), None, 42).unwrap_err();
        assert!(matches!(error, ActivationError::BadCount(_)), "{error}");
    }
}
