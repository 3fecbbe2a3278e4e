//! An S3-compatible bucket as the output (feature `s3`): the S3 form of `.part` + rename.
//!
//! The transfer itself is unchanged: the body goes to a part file in the local staging
//! directory (resumable, segmentable, verified there). Only the last step differs. Where a
//! local run renames the verified part into place, a bucket output uploads it:
//! - a file of at most [`SINGLE_PUT_MAX`] bytes in one create-only `PUT` (`If-None-Match: *`);
//! - a larger one as a multipart upload to a staging key under `PREFIX/.haul-staging/`, then a
//!   create-only copy to its final key, then the staging key is deleted;
//! - one larger than a copy may be ([`COPY_MAX`], S3's limit for one `UploadPartCopy`) as a
//!   multipart upload straight to its key, after a look that no object is there (create-only
//!   but for a writer that completes an upload to the same key in between).
//!
//! A file whose length is announced and large enough for a multipart upload starts that upload
//! as its body arrives ([`Bucket::stream`], up to [`DEFAULT_STREAMS`] files at once,
//! `--s3-streams`): a single stream hands each block it writes to the part file to the upload
//! as well (the body waits while the upload has no room); a segmented transfer's follower reads
//! back, from the page cache, the part file's bytes from 0 with no gap before them as its
//! connections write them. The upload is completed only after the part file was verified, with
//! what it has not yet sent read from the part file; so it holds the bytes the verification
//! hashed. A failed, refused or interrupted file aborts its upload. Its resume starts another:
//! a segmented file's follower begins with the bytes earlier attempts wrote, while a single
//! stream resumed mid-file is uploaded once verified. A streamed upload that fails is done
//! again from the part file.
//!
//! So no object ever holds part of a file under its final key (a multipart upload is no object
//! until it completes), and an object already there is never replaced unless the existing-file
//! rules ask for it. A crash leaves at most staging keys, which `haul gc` lists and removes,
//! and unfinished multipart uploads (S3 lists none of them as objects, and object_store cannot
//! list them). haul records each multipart upload it starts in the staging directory's state
//! (`.haul/uploads/HOST/`, key and upload id) until it is completed or aborted; the next run on
//! that directory, and `haul gc`, abort those of processes no longer running on this machine.
//!
//! Objects put or uploaded to their key carry the digests haul computed as metadata
//! (`x-amz-meta-haul-sha256`, `x-amz-meta-haul-blake3`); one whose upload streamed carries the
//! manifest's sha256 (the only digest known when it starts); a copy none (object_store's copy
//! starts a new upload without them). Every upload sends a SHA-256 checksum the server checks.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, Checksum, S3CopyIfNotExists};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    Attribute, Attributes, CopyMode, CopyOptions, GetOptions, MultipartId, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutPayloadMut,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::{Digests, FileDigests, Want};
use crate::config::BucketSpec;
use crate::error::Error;
use crate::job::{parse_hex, to_hex};

/// Files up to this size go up in one request; larger ones as a multipart upload.
pub const SINGLE_PUT_MAX: u64 = 16 * 1024 * 1024;
/// The size of one part of a multipart upload (and of one read from the part file).
const PART_SIZE: usize = 8 * 1024 * 1024;
/// The largest object S3 copies in one request (`UploadPartCopy`, which the create-only copy
/// is): 5 GiB.
const COPY_MAX: u64 = 5 * 1024 * 1024 * 1024;
/// Parts of one upload in flight at most (so one upload holds at most this many parts).
const PARTS_IN_FLIGHT: usize = 2;
/// Files whose upload streams while they download, at most, by default. Each holds up to
/// three parts in memory ([`PART_SIZE`]: one being filled, [`PARTS_IN_FLIGHT`] being sent).
pub(crate) const DEFAULT_STREAMS: usize = 4;
/// The folder of staging keys, under the bucket output's prefix.
pub const STAGING: &str = ".haul-staging";
const META_SHA256: &str = "haul-sha256";
const META_BLAKE3: &str = "haul-blake3";

/// An open bucket output.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    store: Arc<AmazonS3>,
    prefix: String,
    /// `s3://BUCKET/PREFIX`, for messages.
    shown: String,
    /// Names this process's staging keys (process id and start time), so that runs on other
    /// machines never share one.
    run: String,
    /// Files up to this size are promoted with a copy; larger ones go straight to their key.
    copy_max: u64,
    /// One permit per upload streaming now (none: every file goes up from its part file).
    streams: Arc<Semaphore>,
    /// Where each open multipart upload is recorded (see [`Parts`]), once the store gives it.
    records: Option<PathBuf>,
    /// Numbers this process's records.
    recorded: Arc<AtomicU64>,
}

impl Bucket {
    /// Opens the bucket of `spec` (no request is made).
    pub(crate) fn open(spec: &BucketSpec) -> Result<Self, Error> {
        let (bucket, prefix) = spec.parse()?;
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_checksum_algorithm(Checksum::SHA256)
            // Native S3 (and moto, MinIO) enforce `If-None-Match: *` on completing a multipart
            // upload: the create-only copy is one.
            .with_copy_if_not_exists(S3CopyIfNotExists::Multipart);
        if let Some(endpoint) = &spec.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        } else if std::env::var("AWS_ENDPOINT_URL").is_ok_and(|e| e.starts_with("http://"))
            || std::env::var("AWS_ENDPOINT").is_ok_and(|e| e.starts_with("http://"))
        {
            builder = builder.with_allow_http(true);
        }
        if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region("us-east-1");
        }
        let store = builder
            .build()
            .map_err(|e| Error::Bucket(format!("s3://{bucket}: {e}")))?;
        let shown = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            store: Arc::new(store),
            prefix,
            shown,
            run: format!("{}-{started:x}", std::process::id()),
            copy_max: spec.copy_max.unwrap_or(COPY_MAX),
            streams: Arc::new(Semaphore::new(spec.streams.unwrap_or(DEFAULT_STREAMS))),
            records: None,
            recorded: Arc::default(),
        })
    }

    /// Records each multipart upload this process starts in `uploads` (in the staging
    /// directory's state), in the folder of this machine (see [`records_of_this_machine`]),
    /// until it is completed or aborted.
    ///
    /// # Errors
    /// The folder cannot be created.
    pub(crate) fn record_uploads_in(&mut self, uploads: &Path) -> Result<(), Error> {
        let dir = records_of_this_machine(uploads);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", &dir, e))?;
        self.records = Some(dir);
        Ok(())
    }

    /// Aborts the multipart uploads recorded in the staging directory by processes that are no
    /// longer running (killed mid-upload: S3 keeps such an upload, invisible and billed, until
    /// a lifecycle rule removes it). Returns how many were aborted.
    ///
    /// # Errors
    /// An upload cannot be aborted (its record stays, for the next try).
    pub(crate) async fn abort_orphans(&self) -> Result<usize, Error> {
        let Some(dir) = &self.records else {
            return Ok(0);
        };
        abort_recorded(&self.store, dir, &self.run).await
    }

    /// `s3://BUCKET/PREFIX`.
    pub(crate) fn url(&self) -> &str {
        &self.shown
    }

    /// The key of the destination `rel`.
    fn key(&self, rel: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    /// The staging key of the part file `staging`.
    fn stage_key(&self, staging: &str) -> Key {
        self.key(&format!("{STAGING}/{}-{staging}", self.run))
    }

    /// Where a verified file of `len` bytes goes up: its staging key, or its own key when it is
    /// too large to copy.
    fn upload_key(&self, len: u64, rel: &str, staging: &str) -> Key {
        if len > self.copy_max {
            self.key(rel)
        } else {
            self.stage_key(staging)
        }
    }

    /// Starts uploading a file of `total` bytes (announced) as it downloads to the part file
    /// `staging`, for `rel`: when it will be a multipart upload and fewer than `--s3-streams`
    /// uploads stream now. `sha256`, the manifest's checksum, is the metadata of an upload
    /// straight to its key (the only digest known before the body).
    pub(crate) async fn stream(
        &self,
        total: u64,
        rel: &str,
        staging: &str,
        sha256: Option<[u8; 32]>,
    ) -> Option<Upstream> {
        if total <= SINGLE_PUT_MAX {
            return None;
        }
        let permit = Arc::clone(&self.streams).try_acquire_owned().ok()?;
        let key = self.upload_key(total, rel, staging);
        let attributes = if total > self.copy_max {
            metadata(&FileDigests {
                sha256,
                ..FileDigests::default()
            })
        } else {
            Attributes::new()
        };
        match Parts::start(self, key.clone(), attributes).await {
            Ok(parts) => Some(Upstream {
                parts: Some(parts),
                sent: 0,
                _permit: permit,
            }),
            Err(e) => {
                tracing::debug!(target: "haul::bucket", key = %key, error = %e, "upload not streamed");
                None
            }
        }
    }

    /// The URL of the destination `rel`, for messages.
    pub(crate) fn display(&self, rel: &str) -> String {
        format!("{}/{rel}", self.shown)
    }

    fn fail(&self, what: &str, rel: &str, e: &object_store::Error) -> Error {
        Error::Bucket(format!("{what} {}: {e}", self.display(rel)))
    }

    /// The length and recorded digests of the object at `rel`, or `None` when there is none.
    pub(crate) async fn head(&self, rel: &str) -> Result<Option<(u64, FileDigests)>, Error> {
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        match self.store.get_opts(&self.key(rel), options).await {
            Ok(found) => {
                let meta = |name: &'static str| {
                    found
                        .attributes
                        .get(&Attribute::Metadata(name.into()))
                        .and_then(|v| parse_hex::<32>(v.as_ref()))
                };
                let digests = FileDigests {
                    sha256: meta(META_SHA256),
                    blake3: meta(META_BLAKE3),
                    md5: None,
                };
                Ok(Some((found.meta.size, digests)))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("inspect", rel, &e)),
        }
    }

    /// The length and digests of the object at `rel`, read through: for an object that carries
    /// no digest of haul's (one promoted from a staging key, or put there by another program).
    pub(crate) async fn hash(&self, rel: &str, want: Want) -> Result<(u64, FileDigests), Error> {
        let found = self
            .store
            .get(&self.key(rel))
            .await
            .map_err(|e| self.fail("read", rel, &e))?;
        let mut stream = found.into_stream();
        let mut digests = Digests::new(want);
        let mut total = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.fail("read", rel, &e))?;
            total += chunk.len() as u64;
            digests.update(&chunk);
        }
        Ok((total, digests.finish()))
    }

    /// Uploads the verified part file `file` (`len` bytes, `digests`) to `rel`; replaces an
    /// object there only when `replace`. `staging` names this upload's staging key; `upstream`
    /// is its upload started while the file downloaded, if any. Runs on a blocking thread of
    /// the engine's runtime (it waits for the upload there).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn upload(
        &self,
        file: &File,
        len: u64,
        digests: &FileDigests,
        rel: &str,
        staging: &str,
        replace: bool,
        upstream: Option<Upstream>,
    ) -> Result<(), Error> {
        tokio::runtime::Handle::current().block_on(async {
            let key = self.key(rel);
            let attributes = metadata(digests);
            // A streamed upload serves the object it was started for, of this length.
            let mut upstream = match upstream {
                Some(up) if len > SINGLE_PUT_MAX && up.key() == Some(&self.upload_key(len, rel, staging)) => Some(up),
                Some(up) => {
                    up.abort().await;
                    None
                }
                None => None,
            };
            let result = if len <= SINGLE_PUT_MAX {
                let body = read_at(file, 0, len).map_err(|e| Error::io("read", rel, e))?;
                let options = PutOptions {
                    mode: if replace { PutMode::Overwrite } else { PutMode::Create },
                    attributes,
                    ..PutOptions::default()
                };
                self.store
                    .put_opts(&key, PutPayload::from(body), options)
                    .await
                    .map(drop)
            } else if len > self.copy_max {
                // Too large to copy: straight to its key. A multipart upload is no object until
                // it completes, and completing it cannot be made create-only here, so the key
                // is looked at first.
                if !replace && let Some((size, found)) = self.head(rel).await? {
                    if let Some(up) = upstream.take() {
                        up.abort().await;
                    }
                    return if size == len && same_content(digests, &found) {
                        Ok(())
                    } else {
                        Err(Error::Exists(self.display(rel)))
                    };
                }
                self.put_file(upstream, file, len, &key, attributes, rel).await?;
                Ok(())
            } else {
                let stage = self.stage_key(staging);
                self.put_file(upstream, file, len, &stage, attributes, rel).await?;
                let mode = if replace { CopyMode::Overwrite } else { CopyMode::Create };
                let copied = self
                    .store
                    .copy_opts(&stage, &key, CopyOptions::new().with_mode(mode))
                    .await;
                // Copied or not, the staging object has served: it goes either way.
                let _ = self.store.delete(&stage).await;
                copied
            };
            match result {
                Ok(()) => Ok(()),
                Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                    // Another worker (or an earlier run) put an object there meanwhile: fine when it
                    // is this very file, a conflict when not.
                    match self.head(rel).await? {
                        Some((size, found)) if size == len && same_content(digests, &found) => Ok(()),
                        _ => Err(Error::Exists(self.display(rel))),
                    }
                }
                Err(e) => Err(self.fail("upload to", rel, &e)),
            }
        })
    }

    /// Completes `upstream` with the rest of `file`; without one (or when it fails), uploads
    /// all of `file` to `stage` as a multipart upload.
    async fn put_file(
        &self,
        upstream: Option<Upstream>,
        file: &File,
        len: u64,
        stage: &Key,
        attributes: Attributes,
        rel: &str,
    ) -> Result<(), Error> {
        if let Some(mut up) = upstream
            && let Some(parts) = up.parts.take()
        {
            match parts.send_rest(file, up.sent, len).await {
                Ok(()) => {
                    // How much went up while the file downloaded (the rest from the part file).
                    tracing::debug!(target: "haul::bucket", key = %stage, streamed = up.sent, bytes = len, "upload streamed");
                    return Ok(());
                }
                Err(e) => tracing::debug!(target: "haul::bucket", key = %stage, error = %e, "streamed upload failed"),
            }
        }
        let parts = Parts::start(self, stage.clone(), attributes)
            .await
            .map_err(|e| self.fail("upload to", rel, &e))?;
        parts.send_rest(file, 0, len).await.map_err(|e| match e {
            Sent::Read(e) => Error::io("read", rel, e),
            Sent::Upload(e) => self.fail("upload to", rel, &e),
        })
    }
}

/// Why sending a file's bytes stopped.
#[derive(Debug)]
enum Sent {
    Read(std::io::Error),
    Upload(object_store::Error),
}

impl std::fmt::Display for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read(e) => write!(f, "read: {e}"),
            Self::Upload(e) => e.fmt(f),
        }
    }
}

/// A multipart upload being written: parts of [`PART_SIZE`] bytes (the last shorter) sent as
/// they fill, with the upload recorded in the staging directory's state from its start until
/// it is completed or aborted, so that one a killed process left open is aborted later
/// ([`Bucket::abort_orphans`]). Dropped open, it is aborted in the background.
struct Parts {
    store: Arc<AmazonS3>,
    key: Key,
    id: MultipartId,
    buffer: PutPayloadMut,
    /// The parts sent, by index (`None`: in flight).
    done: Vec<Option<PartId>>,
    in_flight: JoinSet<object_store::Result<(usize, PartId)>>,
    /// The record of this upload, if the bucket keeps records.
    record: Option<PathBuf>,
    /// False once completed or aborted.
    open: bool,
}

impl Parts {
    /// Starts a multipart upload to `key` with `attributes`, and records it.
    async fn start(bucket: &Bucket, key: Key, attributes: Attributes) -> object_store::Result<Self> {
        let options = PutMultipartOptions {
            attributes,
            ..PutMultipartOptions::default()
        };
        let id = bucket.store.create_multipart_opts(&key, options).await?;
        let record = bucket.records.as_ref().and_then(|dir| {
            let n = bucket.recorded.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{}-{n}", bucket.run));
            // Unrecorded, the upload still works; only a crash would leave it to S3's rules.
            match std::fs::write(&path, format!("{key}\n{id}\n")) {
                Ok(()) => Some(path),
                Err(e) => {
                    tracing::warn!(target: "haul::bucket", path = %path.display(), error = %e, "cannot record an upload");
                    None
                }
            }
        });
        Ok(Self {
            store: Arc::clone(&bucket.store),
            key,
            id,
            buffer: PutPayloadMut::new(),
            done: Vec::new(),
            in_flight: JoinSet::new(),
            record,
            open: true,
        })
    }

    /// Waits until fewer than `most` parts are in flight (0: none).
    async fn wait_below(&mut self, most: usize) -> object_store::Result<()> {
        while self.in_flight.len() >= most.max(1) {
            match self.in_flight.join_next().await {
                Some(Ok(Ok((index, part)))) => self.done[index] = Some(part),
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => {
                    return Err(object_store::Error::Generic {
                        store: "S3",
                        source: Box::new(e),
                    });
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Appends `bytes`; each part filled is sent at once (wait for room first).
    fn put(&mut self, mut bytes: Bytes) {
        while !bytes.is_empty() {
            let room = PART_SIZE - self.buffer.content_length();
            if bytes.len() < room {
                self.buffer.push(bytes);
                return;
            }
            self.buffer.push(bytes.split_to(room));
            self.send_part();
        }
    }

    fn send_part(&mut self) {
        let payload = std::mem::take(&mut self.buffer).freeze();
        let (store, key, id, index) = (
            Arc::clone(&self.store),
            self.key.clone(),
            self.id.clone(),
            self.done.len(),
        );
        self.done.push(None);
        self.in_flight.spawn(async move {
            store
                .put_part(&key, &id, index, payload)
                .await
                .map(|part| (index, part))
        });
    }

    /// Sends bytes `from..len` of `file` (one part at a time, at most [`PARTS_IN_FLIGHT`] in
    /// flight), then completes the upload; aborts it when either fails.
    async fn send_rest(mut self, file: &File, from: u64, len: u64) -> Result<(), Sent> {
        let mut offset = from;
        while offset < len {
            let n = (len - offset).min(PART_SIZE as u64);
            let sent = match self.wait_below(PARTS_IN_FLIGHT).await {
                Ok(()) => read_at(file, offset, n).map_err(Sent::Read),
                Err(e) => Err(Sent::Upload(e)),
            };
            match sent {
                Ok(block) => self.put(block.into()),
                Err(e) => {
                    self.abort().await;
                    return Err(e);
                }
            }
            offset += n;
        }
        self.finish().await
    }

    /// Sends the last part and completes the upload; aborts it when that fails.
    async fn finish(mut self) -> Result<(), Sent> {
        if !self.buffer.is_empty() || self.done.is_empty() {
            self.send_part();
        }
        let completed = match self.wait_below(1).await {
            Ok(()) => {
                let parts = self.done.iter().map(|p| p.clone().expect("every part sent")).collect();
                self.store
                    .complete_multipart(&self.key, &self.id, parts)
                    .await
                    .map(drop)
            }
            Err(e) => Err(e),
        };
        match completed {
            Ok(()) => {
                self.close();
                Ok(())
            }
            Err(e) => {
                self.abort().await;
                Err(Sent::Upload(e))
            }
        }
    }

    /// Aborts the upload (S3 removes its parts). Its record stays when the abort fails.
    async fn abort(mut self) {
        self.in_flight.shutdown().await;
        self.open = false;
        if let Err(e) = abort_upload(&self.store, &self.key, &self.id, self.record.take()).await {
            tracing::debug!(target: "haul::bucket", key = %self.key, error = %e, "abort of an upload failed");
        }
    }

    /// The upload is completed: its record goes.
    fn close(&mut self) {
        self.open = false;
        if let Some(record) = self.record.take() {
            let _ = std::fs::remove_file(record);
        }
    }
}

/// Aborts the upload `id` to `key`, then removes its `record` (kept when the abort fails, for a
/// later try). An upload the server no longer knows counts as aborted.
async fn abort_upload(
    store: &AmazonS3,
    key: &Key,
    id: &MultipartId,
    record: Option<PathBuf>,
) -> object_store::Result<()> {
    match store.abort_multipart(key, id).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {
            if let Some(record) = record {
                let _ = std::fs::remove_file(record);
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

impl Drop for Parts {
    /// An upload dropped open (a transfer that ended by another path) is aborted in the
    /// background.
    fn drop(&mut self) {
        if self.open
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            self.in_flight.abort_all();
            let (store, key, id, record) = (
                Arc::clone(&self.store),
                self.key.clone(),
                self.id.clone(),
                self.record.take(),
            );
            runtime.spawn(async move {
                let _ = abort_upload(&store, &key, &id, record).await;
            });
        }
    }
}

/// The folder of `uploads` that holds this machine's records: named by the host, so that a
/// staging directory on a shared file system never has one machine abort another's uploads
/// (whose processes it cannot see).
fn records_of_this_machine(uploads: &Path) -> PathBuf {
    let host = rustix::system::uname().nodename().to_string_lossy().into_owned();
    uploads.join(folder_name(&host))
}

/// `name` as one safe path component: characters other than letters, digits, `-`, `_` and `.`
/// become `_`, and a name of dots only (or none) is prefixed.
fn folder_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.chars().all(|c| c == '.') {
        format!("host{safe}")
    } else {
        safe
    }
}

/// True when the upload record `name` is of a run that ended: not this process's run `own`,
/// and its process (the name's first number) is not `alive`.
fn is_orphan(name: &str, own: &str, alive: impl Fn(u32) -> bool) -> bool {
    let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    let mine = name.strip_prefix(own).is_some_and(|rest| rest.starts_with('-'));
    !mine && !alive(pid)
}

/// Aborts the uploads recorded in `dir` by processes no longer running on this machine (a
/// record's name is its run: process id and start time, then a number); returns how many.
/// `own` is this process's run: a record of another run under this process id (a container
/// starts every run as the same process) is an old one's.
async fn abort_recorded(store: &AmazonS3, dir: &Path, own: &str) -> Result<usize, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("read", dir, e)),
    };
    // kill(pid, 0): no such process only when it fails with ESRCH.
    let alive = |pid: u32| {
        pid != std::process::id()
            && rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
                .is_some_and(|p| !matches!(rustix::process::test_kill_process(p), Err(rustix::io::Errno::SRCH)))
    };
    let mut aborted = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|name| is_orphan(name, own, alive))
        {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut lines = text.lines();
        // The key as recorded: already encoded (`Key::from` would encode it again).
        let (Some(Ok(key)), Some(id)) = (lines.next().map(Key::parse), lines.next()) else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        abort_upload(store, &key, &id.to_owned(), Some(path))
            .await
            .map_err(|e| Error::Bucket(format!("abort the unfinished upload to {key}: {e}")))?;
        aborted += 1;
    }
    Ok(aborted)
}

/// A multipart upload fed with a file's bytes as they arrive (see [`Bucket::stream`]): it
/// holds the file's first [`sent`](Self::sent) bytes, and is completed only by
/// [`Bucket::upload`], after the file was verified. Dropped otherwise, it is aborted.
pub(crate) struct Upstream {
    /// `None` once completed or aborted.
    parts: Option<Parts>,
    sent: u64,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("key", &self.key())
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// The file's bytes handed to the upload: the first `sent()`.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    fn key(&self) -> Option<&Key> {
        self.parts.as_ref().map(|p| &p.key)
    }

    /// Hands `chunks`, the file's bytes from [`sent`](Self::sent) on, to the upload once it has
    /// room (the body waits meanwhile). False when the upload failed: it is aborted then, and
    /// the file goes up from its part file at the end.
    pub(crate) async fn send(&mut self, chunks: &[Bytes]) -> bool {
        let Some(parts) = &mut self.parts else {
            return false;
        };
        if let Err(e) = parts.wait_below(PARTS_IN_FLIGHT).await {
            tracing::debug!(target: "haul::bucket", key = %parts.key, error = %e, "streamed upload failed");
            self.abort_now().await;
            return false;
        }
        for chunk in chunks {
            self.sent += chunk.len() as u64;
            parts.put(chunk.clone());
        }
        true
    }

    /// Aborts the upload (its parts are removed).
    pub(crate) async fn abort(mut self) {
        self.abort_now().await;
    }

    /// Aborts the upload from a blocking thread of the runtime.
    pub(crate) fn abort_blocking(self) {
        tokio::runtime::Handle::current().block_on(self.abort());
    }

    async fn abort_now(&mut self) {
        if let Some(parts) = self.parts.take() {
            parts.abort().await;
        }
    }
}

/// Two digest sets agree when they share at least one digest and no shared one differs.
fn same_content(ours: &FileDigests, theirs: &FileDigests) -> bool {
    let pairs = [(ours.sha256, theirs.sha256), (ours.blake3, theirs.blake3)];
    let shared: Vec<_> = pairs
        .iter()
        .filter_map(|(a, b)| Some((a.as_ref()?, b.as_ref()?)))
        .collect();
    !shared.is_empty() && shared.iter().all(|(a, b)| a == b)
}

fn metadata(digests: &FileDigests) -> Attributes {
    let mut attributes = Attributes::new();
    if let Some(d) = digests.sha256 {
        attributes.insert(Attribute::Metadata(META_SHA256.into()), to_hex(&d).into());
    }
    if let Some(d) = digests.blake3 {
        attributes.insert(Attribute::Metadata(META_BLAKE3.into()), to_hex(&d).into());
    }
    attributes
}

fn read_at(file: &File, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; usize::try_from(len).map_err(std::io::Error::other)?];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// A staging key `haul gc` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// The object's URL.
    pub url: String,
    /// Its size in bytes.
    pub size: u64,
    /// How long ago it was last written.
    pub age: Duration,
}

/// Lists the staging keys of the bucket output `spec` last written at least `older_than` ago
/// (an upload in progress writes its staging key only at its end, and promotes it at once), and
/// removes them unless `dry_run`. Returns what it found.
///
/// # Errors
/// The bucket cannot be listed, or a key cannot be removed.
pub async fn collect_garbage(spec: &BucketSpec, older_than: Duration, dry_run: bool) -> Result<Vec<Leftover>, Error> {
    let bucket = Bucket::open(spec)?;
    let folder = bucket.key(STAGING);
    let mut listing = bucket.store.list(Some(&folder));
    let now = SystemTime::now();
    let mut found = Vec::new();
    while let Some(item) = listing.next().await {
        let meta = item.map_err(|e| bucket.fail("list", STAGING, &e))?;
        let written: SystemTime = meta.last_modified.into();
        let age = now.duration_since(written).unwrap_or_default();
        if age < older_than {
            continue;
        }
        let url = format!("s3://{}/{}", spec.parse()?.0, meta.location);
        if !dry_run {
            match bucket.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::Bucket(format!("remove {url}: {e}"))),
            }
        }
        found.push(Leftover {
            url,
            size: meta.size,
            age,
        });
    }
    Ok(found)
}

/// Aborts the multipart uploads that the staging directory `stage` records for runs no longer
/// running on this machine (killed mid-upload); returns how many.
///
/// # Errors
/// The bucket cannot be opened, or an upload cannot be aborted.
pub async fn abort_unfinished(spec: &BucketSpec, stage: &Path) -> Result<usize, Error> {
    let bucket = Bucket::open(spec)?;
    let dir = records_of_this_machine(&stage.join(crate::STATE_DIR).join(super::UPLOADS_DIR));
    abort_recorded(&bucket.store, &dir, &bucket.run).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> BucketSpec {
        BucketSpec {
            url: url.into(),
            endpoint: None,
            copy_max: None,
            streams: None,
        }
    }

    #[test]
    fn urls_give_a_bucket_and_a_trimmed_prefix() {
        assert_eq!(spec("s3://b").parse().unwrap(), ("b".into(), String::new()));
        assert_eq!(spec("s3://b/x/y/").parse().unwrap(), ("b".into(), "x/y".into()));
        for bad in ["b/x", "s3://", "s3:///x", "s3://b/../x", "https://b/x"] {
            assert!(spec(bad).parse().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_recorded_key_reads_back_as_the_same_key() {
        // A destination named with `%` and a space: its key is stored encoded.
        let key = Key::from("out/100% done.bin");
        let recorded = format!("{key}");
        assert_eq!(Key::parse(recorded.as_str()).unwrap(), key);
        assert_ne!(Key::from(recorded.as_str()), key, "encoded a second time");
    }

    #[test]
    fn a_host_name_makes_one_safe_folder() {
        assert_eq!(folder_name("build-7.lan"), "build-7.lan");
        assert_eq!(folder_name("a/b c"), "a_b_c");
        assert_eq!(folder_name(".."), "host..");
        assert_eq!(folder_name(""), "host");
    }

    #[test]
    fn an_upload_record_is_an_orphan_when_its_run_ended() {
        let alive = |pid: u32| pid == 7;
        assert!(!is_orphan("7-18ab-0", "9-1f", alive), "its process runs");
        assert!(is_orphan("8-18ab-3", "9-1f", alive), "its process is gone");
        assert!(!is_orphan("9-1f-2", "9-1f", |_| false), "this run's own");
        // A container starts each run as the same process: another run under this id ended.
        assert!(is_orphan("9-2e-0", "9-1f", |_| false));
        assert!(!is_orphan("notes.txt", "9-1f", |_| false), "not a record");
    }

    #[test]
    fn content_agrees_only_on_a_shared_digest() {
        let a = FileDigests {
            sha256: Some([1; 32]),
            blake3: Some([2; 32]),
            md5: None,
        };
        let only_sha = FileDigests {
            sha256: Some([1; 32]),
            ..FileDigests::default()
        };
        let other = FileDigests {
            sha256: Some([9; 32]),
            ..FileDigests::default()
        };
        assert!(same_content(&a, &only_sha));
        assert!(!same_content(&a, &other));
        assert!(!same_content(&a, &FileDigests::default()));
    }
}
