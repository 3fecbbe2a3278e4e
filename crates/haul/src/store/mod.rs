//! The output directory: confined names, haul's state directory, temporary files, checksums,
//! and the final rename. Every filesystem call of the engine is made here.
//!
//! Layout: `OUTPUT/.haul/` (mode 0700) is haul's own: the directory lock, the archive (by
//! default) and `parts/`, where every temporary file lives as `<hash of the destination>.part`.
//! No manifest path or server name can reach it: `.haul` is refused as a path component (see
//! [`path`]). Data reaches a final name only through `PartWriter::finish`: the body is written
//! to its part file, its size and digests are checked, and only then is it renamed into place,
//! with `renameat` on descriptors opened without following symlinks (see [`tree`]).
//!
//! A small body (up to 64 KiB) is finished on the calling task in one go (open, write, hash,
//! verify, rename) while the disk keeps each such finish under 2 ms; after a slower one, every
//! finish goes to tokio's blocking pool for 5 s, so a slow disk never stalls the network side for
//! long. Larger bodies, resumed parts (their prefix is hashed again) and `--fsync` finishes are
//! written in 256 KiB blocks on the blocking pool while the next block is being received.

#[cfg(feature = "s3")]
mod bucket;
#[cfg(not(feature = "s3"))]
#[path = "no_bucket.rs"]
mod bucket;
mod digest;
mod disposition;
mod path;
mod tree;

use std::fs::File;
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;

pub(crate) use bucket::{Bucket, Upstream};
#[cfg(feature = "s3")]
pub use bucket::{Leftover, SINGLE_PUT_MAX, STAGING, abort_unfinished, collect_garbage};
pub use digest::{DigestKind, FileDigests, hash_file};
pub(crate) use digest::{Digests, Want};
pub use disposition::{LAUNCHER_EXTENSIONS, disposition_filename};
pub(crate) use path::with_file_name;
pub use path::{Layout, NameTemplate, RelPath, checked_path, output_path};
pub(crate) use tree::Entry;
use tree::{Parent, Replace, WalkError};

use crate::error::Error;

/// Bytes gathered before a write is handed to the blocking pool.
const BLOCK: usize = 256 * 1024;

/// haul's own state directory inside the output directory.
pub const STATE_DIR: &str = ".haul";
/// The directory of temporary files inside [`STATE_DIR`].
const PARTS_DIR: &str = "parts";
/// The output directory's lock file inside [`STATE_DIR`].
const LOCK_FILE: &str = "lock";
/// The suffix of files that hold partial data (inside `.haul/parts/` only).
pub const PART_SUFFIX: &str = ".part";
/// The suffix of a segmented transfer's part file: its ranges are written out of order, so its
/// length says nothing of what it holds (the archive records the ranges missing). A name of its
/// own keeps a single-stream resume from ever taking its length as a prefix.
const SPLIT_SUFFIX: &str = ".split.part";

/// The output directory and how files are finished in it.
#[derive(Debug)]
pub(crate) struct Store {
    root_path: PathBuf,
    root: OwnedFd,
    parts: OwnedFd,
    /// Held for the run: a second haul process on this output directory stops at start.
    /// Released by [`Store::unlock`] when the run ends (a task may still hold the store then).
    lock: Mutex<Option<File>>,
    fsync: bool,
    /// Bounds the file finishes (create, write, rename) running at once. Many threads creating
    /// and renaming in one directory spin on its inode lock in the kernel: measured with perf,
    /// 16 concurrent finishers spent ~27% of all CPU in `rwsem_spin_on_owner`.
    finishers: tokio::sync::Semaphore,
    /// True when the output directory held nothing (but haul's state) at the start: no file of
    /// an earlier run can be in the way, so destinations need no existence check.
    was_empty: bool,
    /// True when names that differ only in case are one file here.
    folds_case: bool,
    /// Until when small finishes must go to the blocking pool (after a slow inline finish).
    slow_until: Mutex<Option<Instant>>,
    /// When this run started (ns since the epoch): a destination changed since was written by
    /// this run.
    started_ns: i128,
    /// In a directory shared by workers: this worker's tag, the prefix of its temporary files.
    tag: Option<String>,
    /// The bucket finished files are uploaded to (the directory then only stages them).
    bucket: Option<Bucket>,
}

/// File finishes running at once (see [`Store::finishers`]).
const FINISHERS: usize = 2;
/// Bodies up to this size are finished on the calling task while the disk is fast: the trip to
/// the blocking pool (two thread wake-ups) costs more than writing a few KiB to the page cache.
const INLINE_MAX: usize = 64 * 1024;
/// An inline finish slower than this means the disk is slow: finishes go to the blocking pool
/// for [`SLOW_DISK_BACKOFF`], so a slow disk never stalls the network side for long.
const INLINE_BUDGET: Duration = Duration::from_millis(2);
/// How long finishes stay off the calling task after a slow one.
const SLOW_DISK_BACKOFF: Duration = Duration::from_secs(5);

/// What a finished file must match.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Expect {
    pub(crate) size: Option<u64>,
    pub(crate) sha256: Option<[u8; 32]>,
    pub(crate) md5: Option<[u8; 16]>,
}

impl Expect {
    /// True when something checks the file's content or length.
    pub(crate) fn is_checkable(&self) -> bool {
        self.size.is_some() || self.sha256.is_some() || self.md5.is_some()
    }
}

/// A file that was verified and renamed into place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finished {
    pub(crate) bytes: u64,
    pub(crate) digests: FileDigests,
}

/// How a finished file takes its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Commit {
    /// Nothing may be there: an existing file at the final name is a conflict.
    New,
    /// Replace the file there (the user's `--on-exists`), keeping its permission bits.
    Replace { mode: u32 },
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

/// Splits `dir/leaf` into its directory (maybe empty) and file name.
fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

impl Store {
    /// Opens the output directory (creating it), locks it for this process, prepares haul's
    /// state directory, and checks that it can be written.
    ///
    /// The lock comes before anything is inspected: what the directory holds is only known
    /// once no other haul process can be writing to it. With `wait`, blocks until it is free.
    ///
    /// With a worker's `tag` (a directory shared by the workers of a queue), the lock is shared:
    /// workers run side by side, a `haul get` on the directory is refused while they do, and the
    /// tag names this worker's temporary files so no two workers share one.
    pub(crate) fn open(root: &Path, fsync: bool, wait: bool, tag: Option<&str>) -> Result<Self, Error> {
        std::fs::create_dir_all(root).map_err(|e| Error::io("create output directory", root, e))?;
        let root_path = std::fs::canonicalize(root).map_err(|e| Error::io("open output directory", root, e))?;
        let root_fd: OwnedFd = File::open(&root_path)
            .map_err(|e| Error::io("open output directory", &root_path, e))?
            .into();
        let state_path = root_path.join(STATE_DIR);
        let state = open_private_dir(&root_fd, STATE_DIR, &state_path)?;
        let lock_path = state_path.join(LOCK_FILE);
        let lock = tree::open_write(state.as_fd(), LOCK_FILE, false).map_err(|e| Error::io("create", &lock_path, e))?;
        if tag.is_some() {
            if wait {
                lock.lock_shared().map_err(|e| Error::io("lock", &lock_path, e))?;
            } else if lock.try_lock_shared().is_err() {
                return Err(Error::Locked(format!(
                    "the output directory {} is in use by a haul get; wait for it to finish, or pass --wait-archive",
                    root_path.display()
                )));
            }
        } else if wait {
            lock.lock().map_err(|e| Error::io("lock", &lock_path, e))?;
        } else if lock.try_lock().is_err() {
            return Err(Error::Locked(format!(
                "the output directory {} is in use by another haul process; wait for it to finish, or pass --wait-archive",
                root_path.display()
            )));
        }
        let parts = open_private_dir(&state, PARTS_DIR, &state_path.join(PARTS_DIR))?;
        // Shared by workers: the others write there too.
        let was_empty = tag.is_none()
            && std::fs::read_dir(&root_path)
                .map_err(|e| Error::io("read output directory", &root_path, e))?
                .all(|entry| entry.is_ok_and(|e| e.file_name() == STATE_DIR));
        let pid = std::process::id();
        let probe = format!(".haul-write-test-{pid}");
        tree::create_new(root_fd.as_fd(), &probe, 0o600)
            .map_err(|e| Error::io("write in output directory", &root_path, e))?;
        // The same name in upper case finds the probe only where the file system folds case
        // (vfat, exFAT, APFS, NTFS, ext4 casefold directories).
        let folds_case = !matches!(
            tree::inspect(root_fd.as_fd(), &format!(".HAUL-WRITE-TEST-{pid}")),
            Ok(Entry::Missing) | Err(_)
        );
        let _ = tree::remove(root_fd.as_fd(), &probe);
        Ok(Self {
            root_path,
            root: root_fd,
            parts,
            lock: Mutex::new(Some(lock)),
            fsync,
            was_empty,
            folds_case,
            finishers: tokio::sync::Semaphore::new(FINISHERS),
            slow_until: Mutex::new(None),
            started_ns: now_ns(),
            tag: tag.map(str::to_owned),
            bucket: None,
        })
    }

    /// Uploads finished files to `bucket` instead of renaming them into the directory, which
    /// then only stages them. Notes the bucket in the state directory (see [`staged_for`]).
    /// Its multipart uploads are recorded in the state directory while open (see
    /// [`Bucket::abort_orphans`]).
    pub(crate) fn with_bucket(mut self, mut bucket: Bucket) -> Result<Self, Error> {
        let note = self.state_path(BUCKET_NOTE);
        std::fs::write(&note, bucket.url()).map_err(|e| Error::io("write", &note, e))?;
        let state = open_private_dir(&self.root, STATE_DIR, &self.root_path.join(STATE_DIR))?;
        open_private_dir(&state, UPLOADS_DIR, &self.state_path(UPLOADS_DIR))?;
        bucket.record_uploads_in(&self.state_path(UPLOADS_DIR))?;
        self.bucket = Some(bucket);
        Ok(self)
    }

    /// The bucket finished files go to, if any.
    pub(crate) fn bucket(&self) -> Option<&Bucket> {
        self.bucket.as_ref()
    }

    /// A file of haul's own in the state directory (which [`Store::open`] checked is a real
    /// directory, mode 0700).
    pub(crate) fn state_path(&self, name: &str) -> PathBuf {
        self.root_path.join(STATE_DIR).join(name)
    }

    /// Releases the output directory's lock (at the end of a run).
    pub(crate) fn unlock(&self) {
        self.lock.lock().expect("directory lock").take();
    }

    /// True when the output directory's file system folds case (so `A.jpg` is `a.jpg`).
    pub(crate) fn folds_case(&self) -> bool {
        self.folds_case
    }

    /// True when nothing but this run can have put a file at a destination (see `was_empty`).
    pub(crate) fn started_empty(&self) -> bool {
        self.was_empty && self.bucket.is_none()
    }

    /// True when a file found at a destination was changed after this run started: a file
    /// this run wrote for another job.
    pub(crate) fn written_this_run(&self, entry: &Entry) -> bool {
        // In a shared directory, other workers write too: a new file may be a finished job of a
        // worker that died before recording it, which the existing-file rules adopt or replace.
        self.tag.is_none()
            && self.bucket.is_none()
            && matches!(entry, Entry::File { changed_ns, .. } if *changed_ns >= self.started_ns)
    }

    /// True unless a recent inline finish was slow (see [`INLINE_BUDGET`]).
    fn disk_is_fast(&self) -> bool {
        self.slow_until
            .lock()
            .expect("slow disk clock")
            .is_none_or(|until| Instant::now() >= until)
    }

    /// The absolute path of a relative one, for messages.
    pub(crate) fn display(&self, rel: &str) -> PathBuf {
        if let Some(bucket) = &self.bucket {
            return PathBuf::from(bucket.display(rel));
        }
        self.root_path.join(rel)
    }

    /// The name of the temporary file of the destination `rel` in `.haul/parts/`.
    fn part_name(&self, rel: &str) -> String {
        let name = if self.folds_case {
            part_name(&rel.to_lowercase())
        } else {
            part_name(rel)
        };
        match &self.tag {
            Some(tag) => format!("{tag}-{name}"),
            None => name,
        }
    }

    /// The length of the temporary file of `rel`, if one is there.
    pub(crate) fn part_len(&self, rel: &str) -> u64 {
        match tree::inspect(self.parts.as_fd(), &self.part_name(rel)) {
            Ok(Entry::File { size, .. }) => size,
            _ => 0,
        }
    }

    /// Removes the temporary file of `rel`.
    pub(crate) fn discard_part(&self, rel: &str) {
        let _ = tree::remove(self.parts.as_fd(), &self.part_name(rel));
    }

    /// The name of a segmented transfer's temporary file for `rel`.
    fn split_name(&self, rel: &str) -> String {
        let part = self.part_name(rel);
        format!("{}{SPLIT_SUFFIX}", part.trim_end_matches(PART_SUFFIX))
    }

    /// The length of the segmented transfer's temporary file of `rel`, if one is there.
    pub(crate) fn split_len(&self, rel: &str) -> Option<u64> {
        match tree::inspect(self.parts.as_fd(), &self.split_name(rel)) {
            Ok(Entry::File { size, .. }) => Some(size),
            _ => None,
        }
    }

    /// Removes the segmented transfer's temporary file of `rel`.
    pub(crate) fn discard_split(&self, rel: &str) {
        let _ = tree::remove(self.parts.as_fd(), &self.split_name(rel));
    }

    /// Opens the segmented transfer's temporary file of `rel` (never through a symlink), sized
    /// to `total` bytes; `fresh` empties it first. Blocking.
    pub(crate) fn open_split(&self, rel: &str, total: u64, fresh: bool) -> Result<SplitPart, Error> {
        let part = self.split_name(rel);
        let path = self.part_display(&part);
        let file = tree::open_write(self.parts.as_fd(), &part, fresh).map_err(|e| Error::io("create", &path, e))?;
        // Sparse: only what is written takes disk space.
        file.set_len(total).map_err(|e| Error::io("size", &path, e))?;
        Ok(SplitPart {
            file: Arc::new(file),
            part,
            path,
        })
    }

    /// Verifies a complete segmented part over its whole content (length, the manifest's
    /// checksums, the archive's digest) and renames it to `final_rel` as `commit` allows. On a
    /// mismatch the part is removed and nothing is renamed.
    /// `prefix`: the digests of the part's first bytes, hashed as they were written; only the
    /// rest is read back. `upstream`: its upload to the bucket, streamed while it downloaded.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn finish_split(
        self: &Arc<Self>,
        part: SplitPart,
        total: u64,
        expect: Expect,
        want: Want,
        prefix: Option<Prefix>,
        final_rel: &str,
        commit: Commit,
        upstream: Option<Upstream>,
    ) -> Result<Finished, Error> {
        let store = Arc::clone(self);
        let final_rel = final_rel.to_owned();
        let _permit = self.finishers.acquire().await.expect("semaphore is never closed");
        join(tokio::task::spawn_blocking(move || {
            let SplitPart { file, part, path } = part;
            let file = Arc::try_unwrap(file)
                .map_err(|_| Error::Internal("a segment writer still holds the part file".into()))?;
            let checked = (|| {
                let len = file.metadata().map_err(|e| Error::io("inspect", &path, e))?.len();
                let (from, mut digests) = prefix.unwrap_or_else(|| (0, Digests::new(want)));
                // Nothing to hash (`--digest none`, no manifest checksum): the length is all.
                let read = if want.any() && from < total {
                    (&file)
                        .seek(SeekFrom::Start(from))
                        .map_err(|e| Error::io("seek", &path, e))?;
                    from + digests.read_from(&mut &file, &path, None)?
                } else {
                    len
                };
                if len != total || read != total {
                    return Err(Error::Verify(format!(
                        "the segmented part holds {read} bytes, expected {total}"
                    )));
                }
                let digests = digests.finish();
                verify(&expect, total, &digests)?;
                Ok(digests)
            })();
            match checked {
                Ok(digests) => {
                    let finished = Finished { bytes: total, digests };
                    store.commit(file, &part, &final_rel, commit, &finished, upstream)?;
                    Ok(finished)
                }
                Err(e) => {
                    if let Some(up) = upstream {
                        up.abort_blocking();
                    }
                    drop(file);
                    let _ = tree::remove(store.parts.as_fd(), &part);
                    Err(e)
                }
            }
        }))
        .await
    }

    /// Opens the directory that holds `rel`.
    fn parent(&self, rel: &str, create: bool) -> Result<Option<Parent<'_>>, Error> {
        let (dir, _) = split(rel);
        match tree::open_parent(self.root.as_fd(), dir, create) {
            Ok(parent) => Ok(Some(parent)),
            Err(WalkError::Missing) => Ok(None),
            Err(WalkError::NotDirectory(component)) => Err(Error::Path(format!(
                "refused path {rel:?}: {component:?} is a symlink or a file, which haul does not follow"
            ))),
            Err(WalkError::Io(component, e)) => {
                let shown = dir
                    .split_inclusive('/')
                    .take_while(|c| c.trim_end_matches('/') != component);
                let upto: String = shown.collect();
                Err(Error::local(
                    "create directory",
                    self.display(&format!("{upto}{component}")),
                    e,
                ))
            }
        }
    }

    /// What is at the destination `rel` now (never following a symlink).
    pub(crate) fn inspect(&self, rel: &str) -> Result<Entry, Error> {
        let Some(parent) = self.parent(rel, false)? else {
            return Ok(Entry::Missing);
        };
        tree::inspect(parent.fd(), split(rel).1).map_err(|e| Error::local("inspect", self.display(rel), e))
    }

    /// True when nothing is at `rel` (one `fstatat` from the output directory, not following a
    /// final symlink). A read-only check for skipping archived jobs: a symlinked directory on
    /// the way is followed, which can only make a file look present (the job is skipped, nothing
    /// is written); everything that writes goes through the descriptor walk.
    pub(crate) fn is_missing(&self, rel: &str) -> bool {
        if self.bucket.is_some() {
            // The archive is trusted for a bucket: no request per archived job.
            return false;
        }
        matches!(
            rustix::fs::statat(&self.root, rel, rustix::fs::AtFlags::SYMLINK_NOFOLLOW),
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR)
        )
    }

    /// `stem (N).ext` for the smallest N whose name is free.
    pub(crate) fn free_name(&self, rel: &str) -> Result<String, Error> {
        let (dir, name) = split(rel);
        let (stem, ext) = match name.rfind('.') {
            Some(dot) if dot > 0 => (&name[..dot], &name[dot..]),
            _ => (name, ""),
        };
        for n in 1u32..=10_000 {
            let candidate = format!("{stem} ({n}){ext}");
            let candidate = if dir.is_empty() {
                candidate
            } else {
                format!("{dir}/{candidate}")
            };
            if self.inspect(&candidate)? == Entry::Missing {
                return Ok(candidate);
            }
        }
        Err(Error::Path(format!(
            "refused path {rel:?}: no free name among 10,000 renames"
        )))
    }

    /// The length and digests of the file at `rel` (to adopt a file already at its destination).
    pub(crate) fn hash_existing(&self, rel: &str, want: Want) -> Result<(u64, FileDigests), Error> {
        let path = self.display(rel);
        let parent = self
            .parent(rel, false)?
            .ok_or_else(|| Error::local("open", &path, io::ErrorKind::NotFound.into()))?;
        let mut file = tree::open_read(parent.fd(), split(rel).1).map_err(|e| Error::local("open", &path, e))?;
        let mut digests = Digests::new(want);
        let total = digests.read_from(&mut file, &path, None)?;
        Ok((total, digests.finish()))
    }
}

/// The file in haul's state directory that names the bucket a staging directory uploads to.
const BUCKET_NOTE: &str = "bucket";
/// The folder in haul's state directory that records a bucket output's open multipart uploads.
pub const UPLOADS_DIR: &str = "uploads";

/// The bucket (`s3://BUCKET/PREFIX`) whose uploads `dir` stages, if it is a staging directory:
/// its files are not in `dir`, so a check of `dir` against the archive would find them all
/// missing.
#[must_use]
pub fn staged_for(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join(STATE_DIR).join(BUCKET_NOTE)).ok()
}

/// The name of the temporary file of a destination: a hash of its relative path, so two
/// destinations never share one and no name is too long.
fn part_name(rel: &str) -> String {
    let digest = Sha256::digest(rel.as_bytes());
    format!("{}{PART_SUFFIX}", crate::job::to_hex(&digest[..16]))
}

/// Where haul keeps the partial data of the destination `rel` of `output_dir` (on a file system
/// that does not fold case): `OUTPUT/.haul/parts/<hash>.part`.
///
/// ```
/// let part = haul::store::part_path("out".as_ref(), "photos/a.jpg");
/// assert!(part.starts_with("out/.haul/parts") && part.to_string_lossy().ends_with(".part"));
/// ```
#[must_use]
pub fn part_path(output_dir: &Path, rel: &str) -> PathBuf {
    output_dir.join(STATE_DIR).join(PARTS_DIR).join(part_name(rel))
}

/// Removes the temporary files of workers that are gone from a directory shared by a queue's
/// workers: files of `OUTPUT/.haul/parts/` named `TAG-…` whose tag `keep` refuses (a part
/// without a tag is a `haul get`'s, and stays). Only regular files there are touched; a
/// symlink or a directory is left alone. Returns how many were removed.
///
/// # Errors
/// The parts directory cannot be read (a missing one holds nothing).
pub fn remove_orphan_parts(output_dir: &Path, keep: impl Fn(&str) -> bool) -> std::io::Result<u64> {
    let dir = output_dir.join(STATE_DIR).join(PARTS_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(tag) = name.to_str().and_then(|n| n.split_once('-')).map(|(tag, _)| tag) else {
            continue;
        };
        if keep(tag) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// Creates (mode 0700) or opens a directory of haul's own, refusing a symlink or a file there.
fn open_private_dir(parent: &OwnedFd, name: &str, path: &Path) -> Result<OwnedFd, Error> {
    match rustix::fs::mkdirat(parent, name, rustix::fs::Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(Error::io("create", path, e.into())),
    }
    let dir = tree::open_dir(parent.as_fd(), name).map_err(|e| {
        if tree::is_not_directory(&e) {
            Error::Path(format!(
                "{} must be haul's own directory, but it is a symlink or a file: move it away",
                path.display()
            ))
        } else {
            Error::io("open", path, e)
        }
    })?;
    rustix::fs::fchmod(&dir, rustix::fs::Mode::from_raw_mode(0o700)).map_err(|e| Error::io("chmod", path, e.into()))?;
    Ok(dir)
}

/// The open `.part` file and the digests of everything written to it so far.
struct Sink {
    file: File,
    digests: Digests,
}

impl Sink {
    /// Hashes and writes the chunks as received (one vectored write, no copy into a buffer).
    fn write(&mut self, path: &Path, chunks: &[Bytes]) -> Result<(), Error> {
        for chunk in chunks {
            self.digests.update(chunk);
        }
        let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
        let mut remaining = &mut slices[..];
        while !remaining.is_empty() {
            match self.file.write_vectored(remaining) {
                Ok(0) => return Err(Error::io("write", path, io::ErrorKind::WriteZero.into())),
                Ok(n) => IoSlice::advance_slices(&mut remaining, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("write", path, e)),
            }
        }
        Ok(())
    }
}

/// Body chunks gathered for one write: the bytes hyper received, not copied.
#[derive(Default)]
struct Chunks {
    chunks: Vec<Bytes>,
    len: usize,
}

impl Chunks {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push(chunk);
    }

    /// Full: a block of bytes, or so many tiny chunks that a vectored write would be split.
    fn is_full(&self) -> bool {
        self.len >= BLOCK || self.chunks.len() >= MAX_CHUNKS
    }
}

/// Chunks per write at most (Linux's IOV_MAX is 1024).
const MAX_CHUNKS: usize = 512;

/// A block being written on the blocking pool; gives back the sink.
type BlockWrite = JoinHandle<Result<Sink, Error>>;

/// The open part file of a segmented transfer, shared by its connections' writers.
#[derive(Debug, Clone)]
pub(crate) struct SplitPart {
    file: Arc<File>,
    part: String,
    path: PathBuf,
}

impl SplitPart {
    /// Starts uploading the file (`total` bytes, for `rel`) to the store's bucket as it
    /// downloads, when it has one and may (see [`Bucket::stream`]).
    pub(crate) async fn stream_upload(
        &self,
        store: &Store,
        total: u64,
        rel: &str,
        sha256: Option<[u8; 32]>,
    ) -> Option<Upstream> {
        store.bucket()?.stream(total, rel, &self.part, sha256).await
    }

    /// Reads `len` bytes at `offset` (written ones: from the page cache), on the blocking pool.
    pub(crate) async fn read(&self, offset: u64, len: usize) -> Result<Bytes, Error> {
        let (file, path) = (Arc::clone(&self.file), self.path.clone());
        join(tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; len];
            std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, offset)
                .map_err(|e| Error::io("read", &path, e))?;
            Ok(Bytes::from(buf))
        }))
        .await
    }

    /// Flushes what was written to the disk (before the archive records it, under `--fsync`).
    pub(crate) async fn sync(&self) -> Result<(), Error> {
        let (file, path) = (Arc::clone(&self.file), self.path.clone());
        join(tokio::task::spawn_blocking(move || {
            file.sync_data().map_err(|e| Error::io("fsync", &path, e))
        }))
        .await
    }
}

/// Writes one connection's bytes of a segmented transfer at their offsets, a block at a time on
/// the blocking pool while the next block is received.
pub(crate) struct RangeWriter {
    file: Arc<File>,
    path: PathBuf,
    /// Where the buffer's first byte goes.
    next: u64,
    buffer: Chunks,
    /// The digests of the file from byte 0 up to `next` (the writer that starts at 0 only):
    /// a file no thief cut is verified without reading it back.
    digests: Option<Digests>,
    /// A block being written; gives back the offset the file holds this writer's bytes up to.
    in_flight: Option<RangeBlock>,
}

/// A block of a range being written: gives back where it ended and the running digests.
type RangeBlock = JoinHandle<Result<(u64, Option<Digests>), Error>>;

/// The digests of a segmented part's first bytes, and how many bytes they cover.
pub(crate) type Prefix = (u64, Digests);

impl RangeWriter {
    /// A writer of `part` from offset `from`; from 0, it also hashes what it writes (`want`).
    pub(crate) fn new(part: &SplitPart, from: u64, want: Want) -> Self {
        Self {
            file: Arc::clone(&part.file),
            path: part.path.clone(),
            next: from,
            buffer: Chunks::default(),
            digests: (from == 0 && want.any()).then(|| Digests::new(want)),
            in_flight: None,
        }
    }

    /// Buffers `data`; a full block goes to the blocking pool. Returns the offset the part file
    /// holds this writer's bytes up to, when a block finished.
    pub(crate) async fn write(&mut self, data: Bytes) -> Result<Option<u64>, Error> {
        self.buffer.push(data);
        if self.buffer.is_full() {
            return self.hand_off().await;
        }
        Ok(None)
    }

    /// Waits for the block in flight, then hands the buffer to the blocking pool.
    async fn hand_off(&mut self) -> Result<Option<u64>, Error> {
        let done = match self.in_flight.take() {
            Some(handle) => {
                let (upto, digests) = join(handle).await?;
                self.digests = digests;
                Some(upto)
            }
            None => None,
        };
        let Chunks { chunks, len } = std::mem::take(&mut self.buffer);
        let (file, path, at) = (Arc::clone(&self.file), self.path.clone(), self.next);
        let mut digests = self.digests.take();
        self.next += len as u64;
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            if let Some(d) = &mut digests {
                for chunk in &chunks {
                    d.update(chunk);
                }
            }
            write_at(&file, &path, &chunks, at)?;
            Ok((at + len as u64, digests))
        }));
        Ok(done)
    }

    /// Writes everything buffered; returns the offset the part file holds this writer's bytes
    /// up to, and (for the writer from 0) the digests of everything before it.
    pub(crate) async fn flush(mut self) -> Result<(u64, Option<Prefix>), Error> {
        if self.buffer.len > 0 {
            self.hand_off().await?;
        }
        let (upto, digests) = match self.in_flight.take() {
            Some(handle) => join(handle).await?,
            None => (self.next, self.digests.take()),
        };
        Ok((upto, digests.map(|d| (upto, d))))
    }
}

/// Writes `chunks` at `offset` with positioned, vectored writes.
fn write_at(file: &File, path: &Path, chunks: &[Bytes], mut offset: u64) -> Result<(), Error> {
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut remaining = &mut slices[..];
    while !remaining.is_empty() {
        match rustix::io::pwritev(file, remaining, offset) {
            Ok(0) => return Err(Error::io("write", path, io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                offset += n as u64;
                IoSlice::advance_slices(&mut remaining, n);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(Error::io("write", path, e.into())),
        }
    }
    Ok(())
}

/// Streams one body into its part file and finishes it into place.
///
/// Dropping a writer that has a block on the blocking pool leaves that block to finish writing
/// into the part file; the engine never drops one mid-body (cancellation ends the body loop and
/// calls [`PartWriter::keep_partial`]), so no write can re-create a part after it was removed.
pub(crate) struct PartWriter {
    store: Arc<Store>,
    rel: String,
    part: String,
    /// Where the part starts: bytes of an earlier attempt kept for a resumed transfer.
    offset: u64,
    want: Want,
    buffer: Chunks,
    sink: Option<Sink>,
    in_flight: Option<BlockWrite>,
    /// Bytes handed to this writer, the resumed prefix included.
    total: u64,
    /// The file's upload to the bucket while it downloads, if one streams.
    upstream: Option<Upstream>,
}

impl PartWriter {
    /// A writer for `rel` that keeps the first `offset` bytes of an existing part file (0
    /// starts afresh: the part is truncated when it is opened, before any byte is written).
    /// Nothing touches the disk until the first block or `finish`.
    pub(crate) fn new(store: Arc<Store>, rel: &str, offset: u64, want: Want) -> Self {
        let part = store.part_name(rel);
        Self {
            store,
            rel: rel.to_owned(),
            part,
            offset,
            want,
            buffer: Chunks::default(),
            sink: None,
            in_flight: None,
            total: offset,
            upstream: None,
        }
    }

    /// Uploads the file (`total` bytes announced, for `rel`) to the store's bucket as it
    /// downloads, when it has one and may (see [`Bucket::stream`]). Only a part started afresh:
    /// the upload holds exactly the bytes this writer hashes.
    pub(crate) async fn stream_upload(&mut self, total: u64, rel: &str, sha256: Option<[u8; 32]>) {
        if self.offset == 0
            && self.total == 0
            && let Some(bucket) = self.store.bucket()
        {
            self.upstream = bucket.stream(total, rel, &self.part, sha256).await;
        }
    }

    /// Hands `data`, the bytes that follow what the upload holds, to the streamed upload.
    async fn send_up(&mut self, data: &[Bytes]) {
        if let Some(up) = &mut self.upstream
            && !up.send(data).await
        {
            self.upstream = None;
        }
    }

    /// Aborts the streamed upload, if any.
    async fn abort_upload(&mut self) {
        if let Some(up) = self.upstream.take() {
            up.abort().await;
        }
    }

    /// Bytes of the file so far, a resumed prefix included.
    pub(crate) fn total(&self) -> u64 {
        self.total
    }

    /// Appends body bytes; every full block goes to the blocking pool while more arrive.
    pub(crate) async fn write(&mut self, data: Bytes) -> Result<(), Error> {
        self.total += data.len() as u64;
        self.buffer.push(data);
        if self.buffer.is_full() {
            self.flush_block().await?;
        }
        Ok(())
    }

    /// Waits for the block being written, then hands the current buffer to the blocking pool.
    async fn flush_block(&mut self) -> Result<(), Error> {
        let sink = match self.in_flight.take() {
            Some(handle) => Some(join(handle).await?),
            None => self.sink.take(),
        };
        let data = std::mem::take(&mut self.buffer).chunks;
        self.send_up(&data).await;
        let store = Arc::clone(&self.store);
        let part = self.part.clone();
        let (offset, want) = (self.offset, self.want);
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let mut sink = match sink {
                Some(sink) => sink,
                None => open_part(&store, &part, offset, want)?,
            };
            sink.write(&store.part_display(&part), &data)?;
            Ok(sink)
        }));
        Ok(())
    }

    /// Writes what is buffered and leaves the part file for a later resume.
    pub(crate) async fn keep_partial(mut self) -> Result<u64, Error> {
        // A resume uploads from the part file.
        self.abort_upload().await;
        if self.buffer.len > 0 {
            self.flush_block().await?;
        }
        if let Some(handle) = self.in_flight.take() {
            join(handle).await?;
        }
        Ok(self.total)
    }

    /// Removes the part file (after any block still being written).
    pub(crate) async fn discard(mut self) {
        self.abort_upload().await;
        if let Some(handle) = self.in_flight.take() {
            let _ = handle.await;
        }
        self.store.discard_part(&self.rel);
    }

    /// Writes the rest, verifies size and digests, and renames the part to `final_rel` as
    /// `commit` allows. On a mismatch the part file is removed and nothing is renamed.
    pub(crate) async fn finish(mut self, expect: Expect, final_rel: &str, commit: Commit) -> Result<Finished, Error> {
        let sink = match self.in_flight.take() {
            Some(handle) => Some(join(handle).await?),
            None => self.sink.take(),
        };
        let store = Arc::clone(&self.store);
        let part = std::mem::take(&mut self.part);
        let final_rel = final_rel.to_owned();
        let Chunks { chunks: data, len } = std::mem::take(&mut self.buffer);
        self.send_up(&data).await;
        let upstream = self.upstream.take();
        let (offset, want, total) = (self.offset, self.want, self.total);
        // Only a fresh small body is finished here: a resumed prefix is hashed again and an
        // fsync waits for the disk, both too slow for the network thread.
        let inline = sink.is_none()
            && offset == 0
            && !store.fsync
            && store.bucket.is_none()
            && len <= INLINE_MAX
            && store.disk_is_fast();
        let work = move || {
            let part_path = store.part_display(&part);
            let mut sink = match sink {
                Some(sink) => sink,
                None => open_part(&store, &part, offset, want)?,
            };
            sink.write(&part_path, &data)?;
            let Sink { file, digests } = sink;
            let digests = digests.finish();
            if let Err(e) = verify(&expect, total, &digests) {
                if let Some(up) = upstream {
                    up.abort_blocking();
                }
                drop(file);
                let _ = tree::remove(store.parts.as_fd(), &part);
                return Err(e);
            }
            let finished = Finished { bytes: total, digests };
            store.commit(file, &part, &final_rel, commit, &finished, upstream)?;
            Ok(finished)
        };
        if inline {
            let started = Instant::now();
            let result = work();
            if started.elapsed() > INLINE_BUDGET {
                *self.store.slow_until.lock().expect("slow disk clock") = Some(Instant::now() + SLOW_DISK_BACKOFF);
            }
            return result;
        }
        let _permit = self.store.finishers.acquire().await.expect("semaphore is never closed");
        join(tokio::task::spawn_blocking(work)).await
    }
}

impl Store {
    /// The path of a part file, for messages.
    fn part_display(&self, part: &str) -> PathBuf {
        self.root_path.join(STATE_DIR).join(PARTS_DIR).join(part)
    }

    /// Moves a verified part file to its final name (or uploads it to the bucket, completing
    /// `upstream`, its upload started while it downloaded).
    fn commit(
        &self,
        file: File,
        part: &str,
        final_rel: &str,
        commit: Commit,
        finished: &Finished,
        upstream: Option<Upstream>,
    ) -> Result<(), Error> {
        if let Some(bucket) = &self.bucket {
            let replace = matches!(commit, Commit::Replace { .. });
            let uploaded = bucket.upload(
                &file,
                finished.bytes,
                &finished.digests,
                final_rel,
                part,
                replace,
                upstream,
            );
            drop(file);
            // Uploaded or refused, this part is done with (a failed upload fetches it again).
            let _ = tree::remove(self.parts.as_fd(), part);
            return uploaded;
        }
        let dest = self.display(final_rel);
        if let Commit::Replace { mode } = commit {
            // A replaced file keeps its permission bits (a 0600 file stays private).
            tree::set_mode(&file, mode).map_err(|e| Error::local("chmod", &dest, e))?;
        }
        if self.fsync {
            file.sync_all()
                .map_err(|e| Error::io("fsync", self.part_display(part), e))?;
        }
        drop(file);
        let parent = self.parent(final_rel, true)?.expect("created");
        let replace = match commit {
            Commit::New => Replace::Never,
            Commit::Replace { .. } => Replace::Allowed,
        };
        let mut result = tree::rename(self.parts.as_fd(), part, parent.fd(), split(final_rel).1, replace);
        if result.as_ref().is_err_and(tree::is_cross_device) {
            // The destination is on another file system (a mount inside the output tree).
            let mode = match commit {
                Commit::Replace { mode } => Some(mode),
                Commit::New => None,
            };
            let leaf = split(final_rel).1;
            result =
                tree::copy_across(self.parts.as_fd(), part, parent.fd(), leaf, replace, mode, self.fsync).map(|()| {
                    let _ = tree::remove(self.parts.as_fd(), part);
                });
        }
        if let Err(e) = result {
            let _ = tree::remove(self.parts.as_fd(), part);
            return Err(if e.kind() == io::ErrorKind::AlreadyExists {
                Error::Conflict(final_rel.to_owned())
            } else {
                Error::local("rename to", &dest, e)
            });
        }
        if self.fsync {
            tree::sync_dir(parent.fd()).map_err(|e| Error::local("fsync", &dest, e))?;
        }
        Ok(())
    }
}

async fn join<T>(handle: JoinHandle<Result<T, Error>>) -> Result<T, Error> {
    match handle.await {
        Ok(result) => result,
        Err(e) => Err(Error::io("write", PathBuf::new(), io::Error::other(e.to_string()))),
    }
}

/// Opens a part file (never through a symlink); keeps and hashes its first `offset` bytes.
fn open_part(store: &Store, part: &str, offset: u64, want: Want) -> Result<Sink, Error> {
    let path = store.part_display(part);
    let mut file =
        tree::open_write(store.parts.as_fd(), part, offset == 0).map_err(|e| Error::io("create", &path, e))?;
    let mut digests = Digests::new(want);
    if offset > 0 {
        // Hash the kept prefix again: the digest covers the whole file, not just this attempt.
        if digests.read_from(&mut file, &path, Some(offset))? < offset {
            return Err(Error::Range(format!(
                "part file shorter than the resume offset {offset}"
            )));
        }
        file.set_len(offset).map_err(|e| Error::io("truncate", &path, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io("seek", &path, e))?;
    }
    Ok(Sink { file, digests })
}

fn verify(expect: &Expect, total: u64, got: &FileDigests) -> Result<(), Error> {
    use crate::job::to_hex;
    if let Some(size) = expect.size.filter(|&s| s != total) {
        return Err(Error::Verify(format!(
            "size mismatch: expected {size} bytes, got {total}"
        )));
    }
    if let Some(want) = expect.sha256
        && got.sha256 != Some(want)
    {
        return Err(Error::Verify(format!(
            "sha256 mismatch: expected {}, got {}",
            to_hex(&want),
            got.sha256.map_or_else(|| "none".to_owned(), |d| to_hex(&d))
        )));
    }
    if let Some(want) = expect.md5
        && let Some(got) = got.md5
        && want != got
    {
        return Err(Error::Verify(format!(
            "md5 mismatch: expected {}, got {}",
            to_hex(&want),
            to_hex(&got)
        )));
    }
    Ok(())
}

/// Checks an existing file against what is known of it.
pub(crate) fn matches(expect: &Expect, total: u64, got: &FileDigests) -> bool {
    verify(expect, total, got).is_ok()
}
