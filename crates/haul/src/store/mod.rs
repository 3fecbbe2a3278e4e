//! The output directory: confined names, `.part` files, checksums, and the final rename.
//!
//! Data reaches a final name only through `PartWriter::finish`: the body is written to
//! `NAME.part` beside the destination, its size and digests are checked, and only then is it
//! renamed into place. Nothing here knows HTTP; the engine hands bytes in.
//!
//! A small body (up to 64 KiB) is finished on the calling task in one go (open, write, hash,
//! verify, rename) while the disk keeps each such finish under 2 ms; after a slower one, every
//! finish goes to tokio's blocking pool for 5 s, so a slow disk never stalls the network side for
//! long. Larger bodies are written in 256 KiB blocks on the blocking pool while the next block is
//! being received (double buffering), and hashed there too.

mod disposition;
mod path;

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

pub use disposition::disposition_filename;
pub use path::{Layout, RelPath, checked_path, output_path};

use crate::error::Error;

/// Bytes gathered before a write is handed to the blocking pool.
const BLOCK: usize = 256 * 1024;
/// Directories known to be safe are remembered up to this many, then forgotten and rechecked.
const DIR_CACHE: usize = 16_384;

/// The suffix of files that hold partial data.
pub const PART_SUFFIX: &str = ".part";

/// The output directory and how files are finished in it.
#[derive(Debug)]
pub(crate) struct Store {
    root: PathBuf,
    fsync: bool,
    safe_dirs: Mutex<HashSet<String>>,
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

/// A file that was verified and renamed into place.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finished {
    pub(crate) bytes: u64,
    pub(crate) sha256: [u8; 32],
}

impl Store {
    /// Opens the output directory, creating it, and checks that it can be written.
    pub(crate) fn open(root: &Path, fsync: bool) -> Result<Self, Error> {
        fs::create_dir_all(root).map_err(|e| Error::io("create output directory", root, e))?;
        let root = fs::canonicalize(root).map_err(|e| Error::io("open output directory", root, e))?;
        let was_empty = fs::read_dir(&root)
            .map_err(|e| Error::io("read output directory", &root, e))?
            .all(|entry| entry.is_ok_and(|e| e.file_name() == crate::config::STATE_DIR));
        let probe = root.join(format!(".haul-write-test-{}", std::process::id()));
        File::create(&probe).map_err(|e| Error::io("write in output directory", &root, e))?;
        // The same name in upper case finds the probe only where the file system folds case
        // (vfat, exFAT, APFS, NTFS, ext4 casefold directories).
        let folds_case = fs::symlink_metadata(root.join(format!(".HAUL-WRITE-TEST-{}", std::process::id()))).is_ok();
        let _ = fs::remove_file(&probe);
        Ok(Self {
            root,
            fsync,
            was_empty,
            folds_case,
            safe_dirs: Mutex::new(HashSet::new()),
            finishers: tokio::sync::Semaphore::new(FINISHERS),
            slow_until: Mutex::new(None),
        })
    }

    /// True when the output directory's file system folds case (so `A.jpg` is `a.jpg`).
    pub(crate) fn folds_case(&self) -> bool {
        self.folds_case
    }

    /// True when nothing but this run can have put a file at a destination (see `was_empty`).
    pub(crate) fn started_empty(&self) -> bool {
        self.was_empty
    }

    /// True unless a recent inline finish was slow (see [`INLINE_BUDGET`]).
    fn disk_is_fast(&self) -> bool {
        self.slow_until
            .lock()
            .expect("slow disk clock")
            .is_none_or(|until| Instant::now() >= until)
    }

    /// The absolute destination of a relative path.
    pub(crate) fn dest(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Creates the parent directories of `rel`, refusing to pass through a symlink or a file,
    /// so no write can land outside the output directory.
    pub(crate) fn ensure_parent(&self, rel: &str) -> Result<(), Error> {
        let Some((dir, _)) = rel.rsplit_once('/') else {
            return Ok(());
        };
        if self.safe_dirs.lock().expect("dir cache").contains(dir) {
            return Ok(());
        }
        let mut current = self.root.clone();
        for component in dir.split('/') {
            current.push(component);
            match fs::symlink_metadata(&current) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(Error::Path(format!(
                        "refused path {rel:?}: {} is a symlink, which haul does not follow",
                        current.display()
                    )));
                }
                Ok(_) => {
                    return Err(Error::Path(format!(
                        "refused path {rel:?}: {} is a file, not a directory",
                        current.display()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => match fs::create_dir(&current) {
                    Ok(()) => {}
                    // Another job created it meanwhile: check it again next time round.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        if !fs::symlink_metadata(&current).is_ok_and(|m| m.is_dir()) {
                            return Err(Error::Path(format!("refused path {rel:?}: raced with a non-directory")));
                        }
                    }
                    Err(e) => return Err(Error::io("create directory", &current, e)),
                },
                Err(e) => return Err(Error::io("inspect", &current, e)),
            }
        }
        let mut cache = self.safe_dirs.lock().expect("dir cache");
        if cache.len() >= DIR_CACHE {
            cache.clear();
        }
        cache.insert(dir.to_owned());
        Ok(())
    }
}

/// The `.part` path beside a destination.
pub(crate) fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(PART_SUFFIX);
    PathBuf::from(name)
}

/// The digests of a file: SHA-256 always (the archive keeps it), MD5 when the manifest asks.
struct Digests {
    sha256: Sha256,
    md5: Option<Md5>,
}

impl Digests {
    fn new(want_md5: bool) -> Self {
        Self {
            sha256: Sha256::new(),
            md5: want_md5.then(Md5::new),
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.sha256.update(data);
        if let Some(md5) = &mut self.md5 {
            md5.update(data);
        }
    }

    fn finish(self) -> ([u8; 32], Option<[u8; 16]>) {
        (self.sha256.finalize().into(), self.md5.map(|m| m.finalize().into()))
    }

    /// Hashes up to `limit` bytes (all, when `None`) read from `file`; returns how many.
    fn read_from(&mut self, file: &mut File, path: &Path, limit: Option<u64>) -> Result<u64, Error> {
        let mut block = vec![0u8; BLOCK];
        let mut total = 0u64;
        loop {
            let want = limit.map_or(BLOCK, |l| {
                usize::try_from((l - total).min(BLOCK as u64)).unwrap_or(BLOCK)
            });
            if want == 0 {
                return Ok(total);
            }
            let got = file.read(&mut block[..want]).map_err(|e| Error::io("read", path, e))?;
            if got == 0 {
                return Ok(total);
            }
            self.update(&block[..got]);
            total += got as u64;
        }
    }
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

/// Digests of an existing file: (length, SHA-256, MD5 when asked).
pub(crate) type FileDigest = (u64, [u8; 32], Option<[u8; 16]>);

/// Streams one body into `DEST.part` and finishes it into `DEST`.
pub(crate) struct PartWriter {
    store: Arc<Store>,
    rel: String,
    /// Where the part starts: bytes of an earlier attempt kept for a resumed transfer.
    offset: u64,
    want_md5: bool,
    buffer: Chunks,
    sink: Option<Sink>,
    in_flight: Option<BlockWrite>,
    /// Bytes handed to this writer, the resumed prefix included.
    total: u64,
}

impl PartWriter {
    /// A writer for `rel` that keeps the first `offset` bytes of an existing `.part` file
    /// (0 starts afresh). Nothing touches the disk until the first block or `finish`.
    pub(crate) fn new(store: Arc<Store>, rel: &str, offset: u64, want_md5: bool) -> Self {
        Self {
            store,
            rel: rel.to_owned(),
            offset,
            want_md5,
            buffer: Chunks::default(),
            sink: None,
            in_flight: None,
            total: offset,
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
        let store = Arc::clone(&self.store);
        let rel = self.rel.clone();
        let (offset, want_md5) = (self.offset, self.want_md5);
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            let mut sink = match sink {
                Some(sink) => sink,
                None => open_part(&store, &rel, offset, want_md5)?,
            };
            sink.write(&part_path(&store.dest(&rel)), &data)?;
            Ok(sink)
        }));
        Ok(())
    }

    /// Writes what is buffered and leaves the `.part` file for a later resume.
    pub(crate) async fn keep_partial(mut self) -> Result<u64, Error> {
        if self.buffer.len > 0 {
            self.flush_block().await?;
        }
        if let Some(handle) = self.in_flight.take() {
            join(handle).await?;
        }
        Ok(self.total)
    }

    /// Removes the `.part` file (after any block still being written).
    pub(crate) async fn discard(mut self) {
        if let Some(handle) = self.in_flight.take() {
            let _ = handle.await;
        }
        let part = part_path(&self.store.dest(&self.rel));
        let _ = tokio::task::spawn_blocking(move || fs::remove_file(part)).await;
    }

    /// Writes the rest, verifies size and digests, and renames the part to `final_rel`.
    /// On a mismatch the part file is removed and nothing is renamed.
    pub(crate) async fn finish(mut self, expect: Expect, final_rel: &str) -> Result<Finished, Error> {
        let sink = match self.in_flight.take() {
            Some(handle) => Some(join(handle).await?),
            None => self.sink.take(),
        };
        let store = Arc::clone(&self.store);
        let rel = std::mem::take(&mut self.rel);
        let final_rel = final_rel.to_owned();
        let Chunks { chunks: data, len } = std::mem::take(&mut self.buffer);
        let (offset, want_md5, total) = (self.offset, self.want_md5, self.total);
        let inline = sink.is_none() && len <= INLINE_MAX && self.store.disk_is_fast();
        let work = move || {
            let part = part_path(&store.dest(&rel));
            let mut sink = match sink {
                Some(sink) => sink,
                None => open_part(&store, &rel, offset, want_md5)?,
            };
            sink.write(&part, &data)?;
            let Sink { file, digests } = sink;
            let (sha256, md5) = digests.finish();
            if let Err(e) = verify(&expect, total, &sha256, md5.as_ref()) {
                drop(file);
                let _ = fs::remove_file(&part);
                return Err(e);
            }
            if store.fsync {
                file.sync_all().map_err(|e| Error::io("fsync", &part, e))?;
            }
            drop(file);
            let dest = store.dest(&final_rel);
            fs::rename(&part, &dest).map_err(|e| Error::io("rename", &dest, e))?;
            if store.fsync {
                sync_parent(&dest)?;
            }
            Ok(Finished { bytes: total, sha256 })
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

async fn join<T>(handle: JoinHandle<Result<T, Error>>) -> Result<T, Error> {
    match handle.await {
        Ok(result) => result,
        Err(e) => Err(Error::io("write", PathBuf::new(), io::Error::other(e.to_string()))),
    }
}

/// Opens `DEST.part` without following a symlink; keeps and hashes its first `offset` bytes.
fn open_part(store: &Store, rel: &str, offset: u64, want_md5: bool) -> Result<Sink, Error> {
    store.ensure_parent(rel)?;
    let part = part_path(&store.dest(rel));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(offset == 0)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&part)
        .map_err(|e| Error::io("create", &part, e))?;
    let mut digests = Digests::new(want_md5);
    if offset > 0 {
        // Re-hash the kept prefix: the digest must cover the whole file, not just this attempt.
        if digests.read_from(&mut file, &part, Some(offset))? < offset {
            return Err(Error::Range(format!(
                "part file shorter than the resume offset {offset}"
            )));
        }
        file.set_len(offset).map_err(|e| Error::io("truncate", &part, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io("seek", &part, e))?;
    }
    let sink = Sink { file, digests };
    Ok(sink)
}

fn verify(expect: &Expect, total: u64, sha256: &[u8; 32], md5: Option<&[u8; 16]>) -> Result<(), Error> {
    use crate::job::to_hex;
    if let Some(size) = expect.size.filter(|&s| s != total) {
        return Err(Error::Verify(format!(
            "size mismatch: expected {size} bytes, got {total}"
        )));
    }
    if let Some(want) = expect.sha256.filter(|w| w != sha256) {
        return Err(Error::Verify(format!(
            "sha256 mismatch: expected {}, got {}",
            to_hex(&want),
            to_hex(sha256)
        )));
    }
    if let (Some(want), Some(got)) = (expect.md5, md5)
        && &want != got
    {
        return Err(Error::Verify(format!(
            "md5 mismatch: expected {}, got {}",
            to_hex(&want),
            to_hex(got)
        )));
    }
    Ok(())
}

fn sync_parent(dest: &Path) -> Result<(), Error> {
    let parent = dest.parent().unwrap_or(dest);
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync", parent, e))
}

/// The SHA-256 and length of an existing file (to adopt a file already at its destination).
pub(crate) fn hash_file(path: &Path, want_md5: bool) -> Result<FileDigest, Error> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| Error::io("open", path, e))?;
    let mut digests = Digests::new(want_md5);
    let total = digests.read_from(&mut file, path, None)?;
    let (sha256, md5) = digests.finish();
    Ok((total, sha256, md5))
}

/// Checks an existing file against what is known of it.
pub(crate) fn matches(expect: &Expect, total: u64, sha256: &[u8; 32], md5: Option<&[u8; 16]>) -> bool {
    verify(expect, total, sha256, md5).is_ok()
}
