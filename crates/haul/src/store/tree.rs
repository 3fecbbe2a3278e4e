//! The output tree, opened relative to directory descriptors.
//!
//! Every destination is reached component by component from the output directory's descriptor
//! with `openat(O_DIRECTORY | O_NOFOLLOW)`, and every file operation is an `*at` call on the
//! parent's descriptor. A symlink anywhere below the output directory is never followed, even
//! one that replaces a directory while haul runs: checking a path and then using it (a race)
//! is replaced by using descriptors that cannot be redirected.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags};

/// Flags for opening a directory of the tree: never through a symlink.
const DIRECTORY: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// The directory that holds a destination: the output directory itself, or one opened below it.
#[derive(Debug)]
pub(crate) enum Parent<'a> {
    /// The output directory.
    Root(BorrowedFd<'a>),
    /// A directory below it.
    Below(OwnedFd),
}

impl Parent<'_> {
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Root(fd) => *fd,
            Self::Below(fd) => fd.as_fd(),
        }
    }
}

/// Why a directory of a destination's path cannot be used.
#[derive(Debug)]
pub(crate) enum WalkError {
    /// `component` is a symlink or a file: haul does not follow or replace it.
    NotDirectory(String),
    /// `component` does not exist (and was not to be created).
    Missing,
    /// Another error while opening or creating `component`.
    Io(String, io::Error),
}

/// Opens the directory `dir` (a `/`-separated relative path) below `root`, creating missing
/// components when `create`. Symlinks are never followed.
pub(crate) fn open_parent<'a>(root: BorrowedFd<'a>, dir: &str, create: bool) -> Result<Parent<'a>, WalkError> {
    if dir.is_empty() {
        return Ok(Parent::Root(root));
    }
    let mut current: Option<OwnedFd> = None;
    for component in dir.split('/') {
        let at = current.as_ref().map_or(root, AsFd::as_fd);
        let opened = match open_dir(at, component) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                match rustix::fs::mkdirat(at, component, Mode::from_raw_mode(0o777)) {
                    // Another job created it meanwhile: open what is there now (never a symlink).
                    Ok(()) | Err(rustix::io::Errno::EXIST) => open_dir(at, component),
                    Err(e) => Err(e.into()),
                }
            }
            other => other,
        };
        current = Some(match opened {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(WalkError::Missing),
            Err(e) if is_not_directory(&e) => return Err(WalkError::NotDirectory(component.to_owned())),
            Err(e) => return Err(WalkError::Io(component.to_owned(), e)),
        });
    }
    Ok(Parent::Below(current.expect("dir is not empty")))
}

/// Opens a directory entry of `dir` as a directory, never through a symlink.
pub(crate) fn open_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    rustix::fs::openat(dir, name, DIRECTORY, Mode::empty()).map_err(Into::into)
}

/// ELOOP (a symlink met with `O_NOFOLLOW`) or ENOTDIR (a file where a directory should be).
pub(crate) fn is_not_directory(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() || code == rustix::io::Errno::NOTDIR.raw_os_error()
    )
}

/// What is at a name in a directory, without following a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Nothing.
    Missing,
    /// A regular file: its size, mode bits and change time (ns since the epoch).
    File { size: u64, mode: u32, changed_ns: i128 },
    /// A symlink.
    Symlink,
    /// A directory.
    Directory,
    /// Anything else (a socket, a device, a FIFO).
    Other,
}

/// Inspects `name` in `dir` without following a symlink.
pub(crate) fn inspect(dir: BorrowedFd<'_>, name: &str) -> io::Result<Entry> {
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(rustix::io::Errno::NOENT) => return Ok(Entry::Missing),
        Err(e) => return Err(e.into()),
    };
    let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    Ok(match kind {
        rustix::fs::FileType::RegularFile => Entry::File {
            size: u64::try_from(stat.st_size).unwrap_or(0),
            mode: stat.st_mode & 0o7777,
            changed_ns: i128::from(stat.st_ctime) * 1_000_000_000 + i128::from(stat.st_ctime_nsec),
        },
        rustix::fs::FileType::Symlink => Entry::Symlink,
        rustix::fs::FileType::Directory => Entry::Directory,
        _ => Entry::Other,
    })
}

/// Opens a regular file of `dir` for reading, never through a symlink.
pub(crate) fn open_read(dir: BorrowedFd<'_>, name: &str) -> io::Result<std::fs::File> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(std::fs::File::from(fd))
}

/// Opens (creating, mode 0666 less the umask) a file of `dir` for reading and writing, never
/// through a symlink; `truncate` empties it.
pub(crate) fn open_write(dir: BorrowedFd<'_>, name: &str, truncate: bool) -> io::Result<std::fs::File> {
    let mut flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if truncate {
        flags |= OFlags::TRUNC;
    }
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o666))?;
    Ok(std::fs::File::from(fd))
}

/// Creates a new file of `dir` exclusively (never an existing file, never through a symlink).
pub(crate) fn create_new(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<std::fs::File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode))?;
    Ok(std::fs::File::from(fd))
}

/// Removes a file of `dir` (not a directory); a missing file is not an error.
pub(crate) fn remove(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// How a finished file takes its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replace {
    /// Only if nothing is there: the file system arbitrates between jobs (`RENAME_NOREPLACE`).
    Never,
    /// Replace what is there (a file the user asked to overwrite).
    Allowed,
}

/// Renames `from` in `from_dir` to `to` in `to_dir`. With [`Replace::Never`] an existing `to`
/// gives `AlreadyExists`.
pub(crate) fn rename(
    from_dir: BorrowedFd<'_>,
    from: &str,
    to_dir: BorrowedFd<'_>,
    to: &str,
    replace: Replace,
) -> io::Result<()> {
    match replace {
        Replace::Allowed => rustix::fs::renameat(from_dir, from, to_dir, to).map_err(Into::into),
        Replace::Never => match rustix::fs::renameat_with(from_dir, from, to_dir, to, RenameFlags::NOREPLACE) {
            // A file system without RENAME_NOREPLACE (some network file systems): check, then
            // rename. The output directory lock keeps other haul processes out of the window.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                if inspect(to_dir, to)? != Entry::Missing {
                    return Err(io::ErrorKind::AlreadyExists.into());
                }
                rustix::fs::renameat(from_dir, from, to_dir, to).map_err(Into::into)
            }
            other => other.map_err(Into::into),
        },
    }
}

/// Moves a complete file to another file system (a mount point inside the output tree, where
/// `rename` fails with EXDEV): its bytes are copied into an unnamed `O_TMPFILE` in the target
/// directory, which gets its name only once complete (`linkat`), so no partial bytes ever
/// stand at a final name. `mode` sets the permission bits first.
pub(crate) fn copy_across(
    from_dir: BorrowedFd<'_>,
    from: &str,
    to_dir: BorrowedFd<'_>,
    to: &str,
    replace: Replace,
    mode: Option<u32>,
    fsync: bool,
) -> io::Result<()> {
    let mut source = open_read(from_dir, from)?;
    let unnamed = rustix::fs::openat(
        to_dir,
        ".",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    )?;
    let mut target = std::fs::File::from(unnamed);
    io::copy(&mut source, &mut target)?;
    if let Some(mode) = mode {
        set_mode(&target, mode)?;
    }
    if fsync {
        target.sync_all()?;
    }
    let proc_path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&target));
    let link = |name: &str| {
        rustix::fs::linkat(
            rustix::fs::CWD,
            proc_path.as_str(),
            to_dir,
            name,
            AtFlags::SYMLINK_FOLLOW,
        )
    };
    match replace {
        // linkat never replaces: the file system arbitrates, as RENAME_NOREPLACE does.
        Replace::Never => link(to).map_err(Into::into),
        Replace::Allowed => {
            // A complete copy under a temporary name, then renamed over the old file.
            let temporary = format!(".haul-replace-{}-{to}", std::process::id());
            let temporary = if temporary.len() > 250 {
                format!(".haul-replace-{}", std::process::id())
            } else {
                temporary
            };
            link(&temporary)?;
            rustix::fs::renameat(to_dir, temporary.as_str(), to_dir, to).map_err(Into::into)
        }
    }
}

/// True for EXDEV: a rename across file systems.
pub(crate) fn is_cross_device(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error())
}

/// Sets a file's permission bits.
pub(crate) fn set_mode(file: &std::fs::File, mode: u32) -> io::Result<()> {
    rustix::fs::fchmod(file, Mode::from_raw_mode(mode)).map_err(Into::into)
}

/// Flushes a directory's entries to disk (after a rename, for `--fsync`).
pub(crate) fn sync_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    rustix::fs::fsync(dir).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_follows_a_symlinked_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root_path = tmp.path().join("out");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&root_path).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root_path.join("a")).unwrap();
        let root = std::fs::File::open(&root_path).unwrap();
        let err = open_parent(root.as_fd(), "a/b", true).unwrap_err();
        assert!(matches!(err, WalkError::NotDirectory(ref c) if c == "a"), "{err:?}");
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "nothing created outside"
        );
        let parent = open_parent(root.as_fd(), "x/y", true).unwrap();
        create_new(parent.fd(), "f", 0o600).unwrap();
        assert!(root_path.join("x/y/f").is_file());
        assert!(matches!(
            open_parent(root.as_fd(), "nope", false),
            Err(WalkError::Missing)
        ));
    }

    #[test]
    fn no_replace_rename_refuses_an_existing_name() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("a"), b"a").unwrap();
        std::fs::write(tmp.path().join("b"), b"b").unwrap();
        let err = rename(dir.as_fd(), "a", dir.as_fd(), "b", Replace::Never).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(tmp.path().join("b")).unwrap(), b"b");
        rename(dir.as_fd(), "a", dir.as_fd(), "b", Replace::Allowed).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("b")).unwrap(), b"a");
        assert_eq!(inspect(dir.as_fd(), "a").unwrap(), Entry::Missing);
    }
}
