//! The engine's configuration and its builder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::auth::Credentials;
use crate::error::Error;
use crate::store::{Layout, STATE_DIR};

/// Transfers in flight at most, over all hosts.
pub const DEFAULT_CONCURRENCY: usize = 32;
/// Transfers in flight at most to one host (`host:port`): the ceiling of its adaptive limit
/// (which starts at 4). See the README, "The defaults for -j and --per-host".
pub const DEFAULT_PER_HOST: usize = 16;
/// Retries after the first attempt.
pub const DEFAULT_RETRIES: u32 = 5;
/// The first retry waits up to this long (full jitter); each retry doubles it.
pub const DEFAULT_RETRY_WAIT: Duration = Duration::from_millis(500);
/// No retry waits longer than this.
pub const DEFAULT_RETRY_CAP: Duration = Duration::from_secs(30);
/// A server's Retry-After is obeyed up to this long.
pub const DEFAULT_MAX_RETRY_WAIT: Duration = Duration::from_secs(300);
/// Connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// No byte for this long fails the attempt (headers or body).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections per large file (`--split`).
pub const DEFAULT_SPLIT: usize = 4;
/// Files of at least twice this size are split, into ranges of at least this size.
pub const DEFAULT_MIN_SPLIT_SIZE: u64 = 16 * 1024 * 1024;
/// Redirects followed at most.
pub const DEFAULT_MAX_REDIRECTS: usize = 10;
/// The archive's file name inside `OUTPUT/.haul/`.
pub const DEFAULT_ARCHIVE_NAME: &str = "archive.sqlite";

/// What to do when the destination file already exists and the archive does not list it.
///
/// ```
/// let config = haul::Config::builder("downloads").on_exists(haul::OnExists::Rename).build();
/// assert_eq!(config.on_exists, haul::OnExists::Rename);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnExists {
    /// Keep it when it matches what the manifest says (size, checksums); it is recorded done
    /// (adopted) and not fetched. A file that does not match is fetched again and replaced.
    #[default]
    Skip,
    /// Fetch again and replace it.
    Overwrite,
    /// Fetch to a free name `stem (N).ext` beside it.
    Rename,
    /// Fail the job.
    Fail,
}

/// Where the archive lives.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ArchiveMode {
    /// `OUTPUT/.haul/archive.sqlite`.
    #[default]
    Default,
    /// A file of the user's choosing.
    Path(PathBuf),
    /// A named archive in PostgreSQL: `postgres://user@host/db#NAME` (feature `queue`), shared
    /// by the machines that run this list one after another.
    Postgres(String),
    /// No archive: no skip list, no resume state across runs.
    Off,
}

/// Everything the engine needs to know. Build one with [`Config::builder`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The output directory.
    pub output_dir: PathBuf,
    /// Transfers in flight at most.
    pub concurrency: usize,
    /// Transfers in flight at most per host: the ceiling of each host's adaptive limit.
    pub per_host: usize,
    /// Adapt each host's limit to what it bears (on by default); off: `per_host`, fixed.
    pub adaptive: bool,
    /// Requests per second at most to each host.
    pub rate: Option<crate::Rate>,
    /// Bytes per second at most over all transfers (`--limit-rate`).
    pub limit_rate: Option<u64>,
    /// Settings for some hosts only (the first matching rule decides).
    pub host_rules: Vec<crate::HostRule>,
    /// How URLs map to paths when the manifest gives none.
    pub layout: Layout,
    /// A file-name template for jobs without a manifest path (`--name`); wins over `layout`.
    pub name_template: Option<crate::store::NameTemplate>,
    /// What to do with existing files.
    pub on_exists: OnExists,
    /// Retries after the first attempt.
    pub retries: u32,
    /// Base of the exponential backoff.
    pub retry_wait: Duration,
    /// Cap of the exponential backoff.
    pub retry_cap: Duration,
    /// Longest Retry-After obeyed.
    pub max_retry_wait: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Read-idle timeout.
    pub read_timeout: Duration,
    /// Abort a transfer slower than `(bytes per second, over this window)`.
    pub lowest_speed: Option<(u64, Duration)>,
    /// Largest file accepted.
    pub max_size: Option<u64>,
    /// Speak HTTP/2 without TLS (h2c) to every server.
    pub http2_prior_knowledge: bool,
    /// The User-Agent header.
    pub user_agent: String,
    /// Headers sent with every request.
    pub headers: Vec<(String, String)>,
    /// Headers sent only to one host: `(host, name, value)`.
    pub host_headers: Vec<(String, String, String)>,
    /// Where the archive lives.
    pub archive: ArchiveMode,
    /// Wait for another process's archive lock instead of failing.
    pub wait_archive: bool,
    /// fsync files, directories and the archive before a job counts as done.
    pub fsync: bool,
    /// Records per archive transaction at most.
    pub batch_records: usize,
    /// Longest wait of a record for its transaction.
    pub batch_delay: Duration,
    /// Credentials and cookies by host.
    pub credentials: Credentials,
    /// Redirects followed at most.
    pub max_redirects: usize,
    /// Follow redirects from https to http.
    pub allow_https_downgrade: bool,
    /// Accept any TLS certificate (dangerous; off by default).
    pub insecure: bool,
    /// Send every request through this proxy (`http://`, `https://` or `socks5://` URL).
    pub proxy: Option<String>,
    /// Ignore the proxy environment variables (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`).
    pub no_proxy: bool,
    /// Name files by the server's `Content-Disposition` when the manifest gives no path.
    pub content_disposition: bool,
    /// Extra trusted certificate authorities (a PEM bundle), beside the system's.
    pub ca_certs: Option<PathBuf>,
    /// Hosts a redirect may take a job's credentials, cookies and per-host headers to.
    pub trusted_hosts: Vec<String>,
    /// Further header names (beside `Authorization`, `Cookie`, `Proxy-Authorization`) whose
    /// values are secrets: sent to the job's own origin only.
    pub secret_headers: Vec<String>,
    /// Accept a 0-byte body as a finished file even when the manifest gives no size of 0.
    pub allow_empty: bool,
    /// The digest the archive records of every file (`--digest`).
    pub digest: crate::DigestKind,
    /// Connections per large file (`--split`; 1: one stream).
    pub split: usize,
    /// Files of at least twice this size are split, into ranges of at least this size.
    pub min_split_size: u64,
    /// The output directory is shared with other haul workers (a fleet on one queue): this
    /// worker's tag names its temporary files, and the directory's lock is shared (a `haul get`
    /// on the same directory is still refused while workers run). `None`: this process owns
    /// the directory.
    pub shared_output: Option<String>,
    /// The job iterator may block for long (a queue waiting for other workers): a job is
    /// handed to the dispatcher before a read that may block, so none waits behind it. Off:
    /// jobs read while the dispatcher is busy gather into batches.
    pub input_may_stall: bool,
    /// With `input_may_stall`, how many jobs the iterator holds ready (reads that do not
    /// block): jobs gather into batches while it has some, as they do without stalls. Without
    /// it, each job is handed over on its own (a wake-up of the reader per job).
    pub input_ready: Option<InputReady>,
    /// Upload finished files to this S3-compatible bucket instead of leaving them in the output
    /// directory, which then only stages part files and holds haul's state (feature `s3`).
    pub bucket: Option<BucketSpec>,
}

impl Config {
    /// Where `job` goes, relative to the output directory: the manifest's path, else the
    /// `--name` template, else the layout's name for the URL.
    ///
    /// # Errors
    /// The path is refused (absolute, `..`, haul's state directory, …), with the reason.
    pub fn destination(&self, job: &crate::Job) -> Result<crate::store::RelPath, String> {
        match (&job.path, &self.name_template) {
            (None, Some(template)) => template.render(job),
            _ => crate::store::output_path(job.path.as_deref(), &job.url, self.layout),
        }
    }

    /// A builder with every default, writing to `output_dir`.
    ///
    /// ```
    /// let config = haul::Config::builder("downloads").concurrency(8).per_host(4).build();
    /// assert_eq!(config.concurrency, 8);
    /// ```
    pub fn builder(output_dir: impl AsRef<Path>) -> ConfigBuilder {
        ConfigBuilder {
            config: Self {
                output_dir: output_dir.as_ref().to_owned(),
                concurrency: DEFAULT_CONCURRENCY,
                per_host: DEFAULT_PER_HOST,
                adaptive: true,
                rate: None,
                limit_rate: None,
                host_rules: Vec::new(),
                layout: Layout::Flat,
                name_template: None,
                on_exists: OnExists::Skip,
                retries: DEFAULT_RETRIES,
                retry_wait: DEFAULT_RETRY_WAIT,
                retry_cap: DEFAULT_RETRY_CAP,
                max_retry_wait: DEFAULT_MAX_RETRY_WAIT,
                connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                read_timeout: DEFAULT_READ_TIMEOUT,
                lowest_speed: None,
                max_size: None,
                http2_prior_knowledge: false,
                user_agent: format!("haul/{}", env!("CARGO_PKG_VERSION")),
                headers: Vec::new(),
                host_headers: Vec::new(),
                archive: ArchiveMode::Default,
                wait_archive: false,
                fsync: false,
                batch_records: crate::archive::DEFAULT_BATCH_RECORDS,
                batch_delay: crate::archive::DEFAULT_BATCH_DELAY,
                credentials: Credentials::default(),
                max_redirects: DEFAULT_MAX_REDIRECTS,
                allow_https_downgrade: false,
                insecure: false,
                proxy: None,
                no_proxy: false,
                content_disposition: false,
                ca_certs: None,
                trusted_hosts: Vec::new(),
                secret_headers: Vec::new(),
                allow_empty: false,
                digest: crate::DigestKind::None,
                split: DEFAULT_SPLIT,
                min_split_size: DEFAULT_MIN_SPLIT_SIZE,
                shared_output: None,
                input_may_stall: false,
                input_ready: None,
                bucket: None,
            },
        }
    }

    /// The archive file this configuration uses, if it uses a SQLite file.
    #[must_use]
    pub fn archive_path(&self) -> Option<PathBuf> {
        match self.archive_location()? {
            crate::archive::Location::File(path) => Some(path),
            crate::archive::Location::Postgres { .. } => None,
        }
    }

    /// Where the archive this configuration uses is, if it uses one.
    #[must_use]
    pub fn archive_location(&self) -> Option<crate::archive::Location> {
        use crate::archive::Location;
        match &self.archive {
            ArchiveMode::Default => Some(Location::File(
                self.output_dir.join(STATE_DIR).join(DEFAULT_ARCHIVE_NAME),
            )),
            ArchiveMode::Path(p) => Some(Location::File(p.clone())),
            ArchiveMode::Postgres(url) => Some(Location::parse(url)),
            ArchiveMode::Off => None,
        }
    }
}

/// How many jobs a job iterator holds ready, that it gives without blocking: kept by the
/// iterator, read by the engine (see [`Config::input_ready`]).
#[derive(Debug, Clone, Default)]
pub struct InputReady(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl InputReady {
    /// A count of none.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the count (the iterator, when it takes jobs in or hands one out).
    pub fn set(&self, ready: usize) {
        self.0.store(ready, std::sync::atomic::Ordering::Release);
    }

    /// The count: the next `ready` reads do not block.
    #[must_use]
    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Builds a [`Config`].
#[derive(Debug, Clone)]
#[must_use]
pub struct ConfigBuilder {
    config: Config,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        impl ConfigBuilder {
            $(
                $(#[$doc])*
                pub fn $name(mut self, value: $ty) -> Self {
                    self.config.$name = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Transfers in flight at most (at least 1).
    concurrency: usize;
    /// Transfers in flight at most per host (at least 1): the adaptive limit's ceiling.
    per_host: usize;
    /// Adapt each host's limit (default on).
    adaptive: bool;
    /// Requests per second at most to each host.
    rate: Option<crate::Rate>;
    /// Bytes per second at most over all transfers.
    limit_rate: Option<u64>;
    /// Settings for some hosts only.
    host_rules: Vec<crate::HostRule>;
    /// How URLs map to paths.
    layout: Layout;
    /// A file-name template for jobs without a manifest path.
    name_template: Option<crate::store::NameTemplate>;
    /// What to do with existing files.
    on_exists: OnExists;
    /// Retries after the first attempt.
    retries: u32;
    /// Base of the exponential backoff.
    retry_wait: Duration;
    /// Cap of the exponential backoff.
    retry_cap: Duration;
    /// Longest Retry-After obeyed.
    max_retry_wait: Duration;
    /// Connect timeout.
    connect_timeout: Duration;
    /// Read-idle timeout.
    read_timeout: Duration;
    /// Abort transfers slower than (bytes per second, over a window).
    lowest_speed: Option<(u64, Duration)>;
    /// Largest file accepted.
    max_size: Option<u64>;
    /// Use h2c prior knowledge.
    http2_prior_knowledge: bool;
    /// The User-Agent header.
    user_agent: String;
    /// Headers sent with every request.
    headers: Vec<(String, String)>;
    /// Headers sent only to one host: `(host, name, value)`.
    host_headers: Vec<(String, String, String)>;
    /// Where the archive lives.
    archive: ArchiveMode;
    /// Wait for another process's archive lock.
    wait_archive: bool;
    /// fsync before recording done.
    fsync: bool;
    /// Records per archive transaction at most.
    batch_records: usize;
    /// Longest wait of a record for its transaction.
    batch_delay: Duration;
    /// Credentials and cookies by host.
    credentials: Credentials;
    /// Redirects followed at most.
    max_redirects: usize;
    /// Follow redirects from https to http.
    allow_https_downgrade: bool;
    /// Accept any TLS certificate.
    insecure: bool;
    /// Send every request through this proxy.
    proxy: Option<String>;
    /// Ignore the proxy environment variables.
    no_proxy: bool;
    /// Name files by the server's Content-Disposition.
    content_disposition: bool;
    /// Extra trusted certificate authorities (a PEM bundle).
    ca_certs: Option<PathBuf>;
    /// Hosts a redirect may take a job's credentials to.
    trusted_hosts: Vec<String>;
    /// Further secret header names (sent to the job's own origin only).
    secret_headers: Vec<String>;
    /// Accept 0-byte bodies without a manifest size of 0.
    allow_empty: bool;
    /// Share the output directory with other workers, tagging temporary files with this tag.
    shared_output: Option<String>;
    /// Upload finished files to an S3-compatible bucket (the output directory stages them).
    bucket: Option<BucketSpec>;
    /// The job iterator may block for long: hand each job over before a read that may block.
    input_may_stall: bool;
    /// How many jobs a job iterator that may block holds ready.
    input_ready: Option<InputReady>;
    /// The digest the archive records of every file.
    digest: crate::DigestKind;
    /// Connections per large file (at least 1).
    split: usize;
    /// The smallest range of a split file.
    min_split_size: u64;
}

impl ConfigBuilder {
    /// The configuration.
    #[must_use]
    pub fn build(mut self) -> Config {
        self.config.concurrency = self.config.concurrency.max(1);
        self.config.per_host = self.config.per_host.max(1);
        self.config.split = self.config.split.max(1);
        self.config.min_split_size = self.config.min_split_size.max(1);
        self.config
    }
}

/// Where a bucket output is: `s3://BUCKET/PREFIX`, and an endpoint for S3-compatible servers.
///
/// Credentials and the region come from the usual AWS variables (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSpec {
    /// `s3://BUCKET` or `s3://BUCKET/PREFIX`.
    pub url: String,
    /// The server's base URL (`http://127.0.0.1:9000`), for S3-compatible servers.
    pub endpoint: Option<String>,
    /// The largest file promoted from its staging key with one server-side copy (`None`: S3's
    /// limit, 5 GiB). A larger one is uploaded straight to its key (see `store::bucket`).
    pub copy_max: Option<u64>,
    /// Files whose upload streams while they download, at most (`None`: 4; 0: every file is
    /// uploaded from its part file once verified). Each holds up to 24 MiB in memory.
    pub streams: Option<usize>,
}

impl BucketSpec {
    /// The bucket and the prefix (without slashes at its ends) of `url`.
    ///
    /// # Errors
    /// A URL that is not `s3://BUCKET[/PREFIX]`.
    pub fn parse(&self) -> Result<(String, String), Error> {
        let rest = self
            .url
            .strip_prefix("s3://")
            .ok_or_else(|| Error::Bucket(format!("{:?} is not an s3://BUCKET/PREFIX URL", self.url)))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::Bucket(format!("{:?} names no bucket", self.url)));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|c| c == "." || c == "..") {
            return Err(Error::Bucket(format!(
                "{:?}: the prefix may not hold . or ..",
                self.url
            )));
        }
        Ok((bucket.to_owned(), prefix.to_owned()))
    }
}
