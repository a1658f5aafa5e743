//! The files prism-vnic creates where a local user may reach them: socket and capture
//! directories, sockets and capture files. None of them is made with the umask's mode, none
//! replaces what is not its own, and none follows a link planted by someone else.

use std::ffi::CString;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};

use super::access::Gid;

#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error(
        "directory {} is writable by others (mode {mode:o}) without the sticky bit: \
         anyone could replace the sockets in it", .path.display()
    )]
    OpenDirectory { path: PathBuf, mode: u32 },
    #[error(
        "directory {} belongs to uid {owner}, neither root nor this process's user", .path.display()
    )]
    ForeignDirectory { path: PathBuf, owner: u32 },
    #[error("{} exists and is not a socket: not removing it", .0.display())]
    NotASocket(PathBuf),
    #[error("{} is a live socket (another prism-vnic?): not removing it", .0.display())]
    LiveSocket(PathBuf),
    #[error("{} is a stale socket of uid {owner}: not removing it", .path.display())]
    ForeignSocket { path: PathBuf, owner: u32 },
    #[error(
        "captures are written only in the capture directory {}: give a file name, not {}",
        .dir.display(), .file.display()
    )]
    OutsideCaptureDir { dir: PathBuf, file: PathBuf },
    #[error("cannot create capture file {}: {source} (a capture never replaces a file)", .path.display())]
    CreateCapture {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PathError + '_ {
    move |source| PathError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Makes the process's umask strict, so that a file is never reachable by others between
/// its creation and the chmod that gives it its configured mode. Called once at start.
pub fn strict_umask() {
    // SAFETY: umask has no preconditions; it only changes this process's mask.
    unsafe { libc::umask(0o077) };
}

/// Creates `dir` with `mode` if it is missing; checks it either way: a directory, owned by
/// root or this process's user, and not writable by others unless sticky.
pub fn prepare_dir(dir: &Path, mode: u32) -> Result<(), PathError> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|source| PathError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        // The umask took bits off `mode`; the configured mode is what the user asked for.
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).map_err(io_error(dir))?;
    }
    check_dir(dir)
}

/// The checks of [`prepare_dir`] on an existing directory.
pub fn check_dir(dir: &Path) -> Result<(), PathError> {
    let meta = fs::metadata(dir).map_err(io_error(dir))?;
    if !meta.is_dir() {
        return Err(PathError::NotADirectory(dir.to_path_buf()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & libc::S_ISVTX == 0 {
        return Err(PathError::OpenDirectory {
            path: dir.to_path_buf(),
            mode,
        });
    }
    if meta.uid() != 0 && meta.uid() != euid() {
        return Err(PathError::ForeignDirectory {
            path: dir.to_path_buf(),
            owner: meta.uid(),
        });
    }
    Ok(())
}

/// The directory a socket goes in, prepared as [`prepare_dir`] does.
pub fn prepare_parent(path: &Path, dir_mode: u32) -> Result<(), PathError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    prepare_dir(parent, dir_mode)
}

/// Clears the way for binding a socket at `path`: nothing there is fine; a stale socket of
/// this user is removed; anything else (a file, a link, a live socket, another user's
/// socket) is refused and left alone.
pub fn clear_socket_path(path: &Path) -> Result<(), PathError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(PathError::NotASocket(path.to_path_buf()));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(PathError::LiveSocket(path.to_path_buf()));
    }
    if meta.uid() != euid() {
        return Err(PathError::ForeignSocket {
            path: path.to_path_buf(),
            owner: meta.uid(),
        });
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(path)(e)),
        _ => Ok(()),
    }
}

/// Gives a file just created by this process its mode and (if any) group.
pub fn set_mode_and_group(path: &Path, mode: u32, group: Option<Gid>) -> Result<(), PathError> {
    if let Some(group) = group {
        std::os::unix::fs::lchown(path, None, Some(group)).map_err(io_error(path))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_error(path))
}

/// Removes a socket this process bound, at shutdown: only if a socket is still there.
pub fn remove_own_socket(path: &Path) {
    if fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket()) {
        let _ = fs::remove_file(path);
    }
}

/// Creates a new capture file, mode 0600: never following a link, never opening what
/// exists (a file to truncate, a FIFO that would block the writer, a device).
pub fn create_capture_file(path: &Path) -> Result<File, PathError> {
    let create_error = |source| PathError::CreateCapture {
        path: path.to_path_buf(),
        source,
    };
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| create_error(io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: c_path is a NUL-terminated string that lives across the call; open returns a
    // new fd or -1 and touches no memory of ours.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(create_error(io::Error::last_os_error()));
    }
    // SAFETY: fd is a new open descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    debug_assert!(file.as_raw_fd() >= 0);
    Ok(file)
}

/// Where a capture a control client asks for is written: a plain file name in `dir` (or a
/// path whose directory is `dir` itself). Anything else is refused.
pub fn capture_path(dir: &Path, file: &Path) -> Result<PathBuf, PathError> {
    let outside = || PathError::OutsideCaptureDir {
        dir: dir.to_path_buf(),
        file: file.to_path_buf(),
    };
    let mut components = file.components();
    let name = match (components.next_back(), components.next_back()) {
        (Some(Component::Normal(name)), None) => name,
        (Some(Component::Normal(name)), Some(_)) => {
            let parent = file.parent().ok_or_else(outside)?;
            let same = match (fs::canonicalize(parent), fs::canonicalize(dir)) {
                (Ok(parent), Ok(dir)) => parent == dir,
                _ => false,
            };
            if !same {
                return Err(outside());
            }
            name
        }
        _ => return Err(outside()),
    };
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_name_stays_in_the_capture_directory() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(
            capture_path(d, Path::new("a.pcapng")).unwrap(),
            d.join("a.pcapng")
        );
        assert_eq!(
            capture_path(d, &d.join("b.pcapng")).unwrap(),
            d.join("b.pcapng")
        );
        for bad in ["../a.pcapng", "/etc/passwd", "sub/a.pcapng", "..", ".", ""] {
            assert!(
                matches!(
                    capture_path(d, Path::new(bad)),
                    Err(PathError::OutsideCaptureDir { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_capture_file_is_always_new_and_never_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_capture_file(&link).is_err());
        assert!(create_capture_file(&target).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep");
        let new = dir.path().join("new");
        create_capture_file(&new).unwrap();
        assert_eq!(fs::metadata(&new).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn only_a_stale_socket_of_our_own_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"keep").unwrap();
        assert!(matches!(
            clear_socket_path(&file),
            Err(PathError::NotASocket(_))
        ));
        let live = dir.path().join("live.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
        assert!(matches!(
            clear_socket_path(&live),
            Err(PathError::LiveSocket(_))
        ));
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        clear_socket_path(&stale).unwrap();
        assert!(!stale.exists());
        clear_socket_path(&stale).unwrap();
    }

    #[test]
    fn an_open_or_foreign_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        prepare_dir(&open, 0o750).unwrap();
        assert_eq!(fs::metadata(&open).unwrap().mode() & 0o7777, 0o750);
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            check_dir(&open),
            Err(PathError::OpenDirectory { .. })
        ));
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        check_dir(&open).unwrap();
        if euid() == 0 {
            std::os::unix::fs::chown(&open, Some(65534), None).unwrap();
            assert!(matches!(
                check_dir(&open),
                Err(PathError::ForeignDirectory { .. })
            ));
        }
    }
}
