//! Command-line flags, and their conversion into the engine's typed [`haul::Config`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
Exit codes:
  0    every job done or skipped
  1    some jobs failed, or some manifest lines were bad (the rest is done)
  2    usage error: a bad argument or manifest; nothing was downloaded
  3    fatal: the run could not go on (disk full, output not writable, archive locked)
  130  interrupted by Ctrl-C; 143 stopped by SIGTERM (rerun to finish)";

const GET_EXAMPLES: &str = "\
Examples:
  haul get -i urls.txt -o photos                 one URL per line
  haul get -i posts.jsonl -o out --name '{id}{ext}'
  haul get -i urls.txt -o out --per-host 4 --rate 10/s
  haul failed out | haul get -i - -o out         retry what failed, as it was given
  haul get -i urls.txt -o out --dry-run          what would be fetched, and where

Exit codes:
  0 all done or skipped · 1 some failed · 2 usage error · 3 fatal · 130 Ctrl-C · 143 SIGTERM";

/// haul: download thousands to millions of files, correctly, fast and politely.
#[derive(Debug, Parser)]
#[command(
    name = "haul",
    version,
    about = "Download thousands to millions of files, correctly, fast and politely",
    long_about = None,
    max_term_width = 100,
    after_help = EXIT_CODES
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Download every URL of a manifest (and/or the URLs given as arguments)
    #[command(after_help = GET_EXAMPLES)]
    Get(Box<GetArgs>),
    /// Add a manifest's jobs to a shared PostgreSQL queue (the same job twice is one job)
    #[command(after_help = QUEUE_EXAMPLES)]
    Enqueue(EnqueueArgs),
    /// Download the jobs of a shared PostgreSQL queue, beside any number of other workers on any
    /// number of machines; ends when the queue is empty (or waits for more with --follow)
    #[command(after_help = QUEUE_EXAMPLES)]
    Work(Box<WorkArgs>),
    /// Show what an archive (or a queue, with --queue) holds: counts by status, bytes, failures
    /// by reason and host; for a queue also its workers and the hosts cooling down
    Status(StatusArgs),
    /// Check the archive's done files against the disk (exists, size; the recorded digest with --full); what is
    /// missing or corrupt is fetched again, and replaced, by the next run
    Verify(VerifyArgs),
    /// Print the failed jobs of an archive as a JSONL manifest that `haul get -i -` runs unchanged
    /// (real URLs, sizes, checksums, non-secret headers, original lines)
    Failed(FailedArgs),
    /// Manage an archive
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// List and remove what interrupted uploads left in a bucket output (staging keys under
    /// PREFIX/.haul-staging/), and abort the multipart uploads stopped runs on this machine left
    /// open
    Gc(GcArgs),
    /// Print a shell completion script (e.g. `haul completions bash > /etc/bash_completion.d/haul`)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `haul man | man -l -`
    Man,
}

const QUEUE_EXAMPLES: &str = "\
Examples (one database, any number of workers, a shared directory):
  export HAUL_QUEUE=postgres://haul@db.example/haul
  haul enqueue -i urls.txt --job photos          add the jobs (again: only the new ones)
  haul work --job photos -o /mnt/shared/photos -j 32 --per-host 4   on every machine
  haul status --job photos                       counts, workers, hosts cooling down
  haul failed --job photos > failed.jsonl        what failed, as a manifest
  haul work --job photos -o /mnt/shared/photos --retry-failed";

/// Where the queue is.
#[derive(Debug, Args)]
pub(crate) struct QueueArgs {
    /// The queue: a PostgreSQL URL (postgres://user@host:port/database; add
    /// ?sslmode=verify-full[&sslrootcert=FILE] for TLS)
    // The URL may hold a password: --help names the variable, never its value.
    #[arg(
        help_heading = "Queue",
        long,
        env = "HAUL_QUEUE",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub(crate) queue: String,
    /// The job: a name that keeps several lists apart in one database
    #[arg(help_heading = "Queue", long = "job", value_name = "JOB", default_value = haul::queue::DEFAULT_NAME)]
    pub(crate) job: String,
}

#[derive(Debug, Args)]
pub(crate) struct EnqueueArgs {
    #[command(flatten)]
    pub(crate) queue: QueueArgs,
    /// The manifest to read ("-" for standard input)
    #[arg(short, long, value_name = "FILE")]
    pub(crate) input: PathBuf,
    /// The manifest's format [default: from the extension, else read off the content]
    #[arg(long, value_enum)]
    pub(crate) format: Option<FormatArg>,
    /// What keys a job (the same key twice is one job)
    #[arg(long, value_enum, default_value = "id")]
    pub(crate) archive_key: ArchiveKeyArg,
    /// Further header names whose values are secrets: not stored in the queue
    #[arg(long = "secret-header", value_name = "NAME")]
    pub(crate) secret_headers: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct WorkArgs {
    #[command(flatten)]
    pub(crate) queue: QueueArgs,
    /// How long a claimed job stays this worker's without a heartbeat; after that another
    /// worker takes it over
    #[arg(help_heading = "Queue", long, value_parser = parse_duration, default_value = "60s")]
    pub(crate) lease: Duration,
    /// A job claimed this many times by workers that died before finishing it fails
    #[arg(help_heading = "Queue", long, default_value_t = 3)]
    pub(crate) max_attempts: u32,
    /// When the queue is empty, wait for more jobs instead of ending
    #[arg(help_heading = "Queue", long)]
    pub(crate) follow: bool,
    /// This worker's name in `haul status` [default: HOST:PID]
    #[arg(help_heading = "Queue", long, value_name = "NAME")]
    pub(crate) worker_name: Option<String>,
    #[command(flatten)]
    pub(crate) get: GetArgs,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The archive file, an output directory holding `.haul/archive.sqlite`, or a PostgreSQL
    /// archive's URL (postgres://user@host/db#NAME) [default: .]
    pub(crate) archive: Option<PathBuf>,
    /// Show a queue instead: a PostgreSQL URL (or $HAUL_QUEUE with --job)
    #[arg(long, value_name = "URL")]
    pub(crate) queue: Option<String>,
    /// The queue's job
    #[arg(long = "job", value_name = "JOB")]
    pub(crate) job: Option<String>,
    /// Print JSON (queues only)
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ArchiveArg {
    /// The archive file, an output directory holding `.haul/archive.sqlite`, or a PostgreSQL
    /// archive's URL (postgres://user@host/db#NAME) [default: .]
    pub(crate) archive: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct GcArgs {
    /// The bucket output: s3://BUCKET/PREFIX
    #[arg(short, long, value_name = "URL")]
    pub(crate) output: String,
    /// The S3-compatible server's URL (AWS credentials and region come from the AWS_* variables)
    #[arg(long, value_name = "URL", env = "HAUL_S3_ENDPOINT")]
    pub(crate) s3_endpoint: Option<String>,
    /// Only keys last written at least this long ago (an upload in progress is younger)
    #[arg(long, value_parser = parse_duration, default_value = "1h", value_name = "DURATION")]
    pub(crate) older_than: Duration,
    /// List them without removing anything
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// The staging directory of runs on this machine: the multipart uploads it records for
    /// runs that are no longer running are aborted too [default: ~/.cache/haul/stage/BUCKET/PREFIX]
    #[arg(long, value_name = "DIR")]
    pub(crate) stage_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The output directory [default: .]
    pub(crate) dir: Option<PathBuf>,
    /// The archive: a file or a PostgreSQL URL [default: DIR/.haul/archive.sqlite]
    #[arg(long, value_name = "FILE|URL")]
    pub(crate) archive: Option<PathBuf>,
    /// Also compare each file's SHA-256 with the one recorded (reads every byte)
    #[arg(long)]
    pub(crate) full: bool,
}

#[derive(Debug, Args)]
pub(crate) struct FailedArgs {
    #[command(flatten)]
    pub(crate) archive: ArchiveArg,
    /// Print a queue's failed jobs instead: a PostgreSQL URL (or $HAUL_QUEUE with --job)
    #[arg(long, value_name = "URL")]
    pub(crate) queue: Option<String>,
    /// The queue's job
    #[arg(long = "job", value_name = "JOB")]
    pub(crate) job: Option<String>,
    /// Accepted for compatibility: URLs are always printed as stored (a manifest is data)
    #[arg(long, hide = true)]
    pub(crate) show_secrets: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ArchiveCommand {
    /// Mark ids from a text file (one per line, as yt-dlp and gallery-dl keep them) as done
    Import {
        /// The file of ids ("-" for standard input)
        file: PathBuf,
        /// The archive file, an output directory holding `.haul/archive.sqlite`, or a PostgreSQL
        /// archive's URL (postgres://user@host/db#NAME) [default: .]
        #[arg(long)]
        archive: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FormatArg {
    Plain,
    Jsonl,
    Csv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LayoutArg {
    /// The last segment of the URL path
    Flat,
    /// host/url/path
    Mirror,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OnExistsArg {
    /// Keep a file that matches the manifest's size/checksums (adopt it); refetch one that does not
    Skip,
    /// Fetch again and replace it
    Overwrite,
    /// Fetch to "name (N).ext" beside it
    Rename,
    /// Fail the job
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProgressArg {
    /// Bars on a terminal, plain lines otherwise
    Auto,
    /// Bars (indicatif)
    Bars,
    /// One summary line on stderr every few seconds
    Plain,
    /// JSON lines only, on stderr: a status object every second (rates, ETA, hosts), an event per
    /// failed job, bad line and host pause, and a final summary object
    Json,
    /// Nothing but the final summary
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ArchiveKeyArg {
    /// The manifest's id, else the URL
    Id,
    /// Always the URL
    Url,
}

#[derive(Debug, Args)]
pub(crate) struct GetArgs {
    /// URLs to download (in addition to those of --input)
    #[arg(help_heading = "Input")]
    pub(crate) urls: Vec<String>,
    /// The manifest to read ("-" for standard input)
    #[arg(help_heading = "Input", short, long, value_name = "FILE")]
    pub(crate) input: Option<PathBuf>,
    /// The manifest's format [default: from the extension (.jsonl, .ndjson, .json, .csv), else read off the content]
    #[arg(help_heading = "Input", long, value_enum)]
    pub(crate) format: Option<FormatArg>,
    /// Print what would be fetched (and where), skipped or refused, without a request or a
    /// change on disk: one tab-separated line per job on standard output
    #[arg(help_heading = "Input", long)]
    pub(crate) dry_run: bool,
    /// Check the whole manifest first and download nothing if any line is bad
    #[arg(help_heading = "Input", long)]
    pub(crate) strict: bool,
    /// The output directory, or s3://BUCKET/PREFIX to upload finished files to an
    /// S3-compatible bucket [default: the current directory, announced]
    #[arg(help_heading = "Output", short, long, value_name = "DIR|URL")]
    pub(crate) output: Option<PathBuf>,
    /// With an s3:// output: the S3-compatible server's URL (credentials and region come from
    /// the usual AWS_* variables)
    #[arg(help_heading = "Output", long, value_name = "URL", env = "HAUL_S3_ENDPOINT")]
    pub(crate) s3_endpoint: Option<String>,
    /// With an s3:// output: the local directory that holds part files until they are uploaded,
    /// and haul's state [default: ~/.cache/haul/stage/BUCKET/PREFIX]
    #[arg(help_heading = "Output", long, value_name = "DIR")]
    pub(crate) stage_dir: Option<PathBuf>,
    /// With an s3:// output: larger files go straight to their key (checked free first) instead
    /// of through a staging key and a create-only copy, which S3 allows up to 5 GiB [default: 5G]
    #[arg(help_heading = "Output", long, value_parser = parse_size, value_name = "SIZE")]
    pub(crate) s3_copy_max: Option<u64>,
    /// With an s3:// output: files whose upload runs while they download, at most (each holds
    /// up to 24 MiB of memory); others, and files of unknown length, are uploaded once verified.
    /// 0 uploads every file after its download [default: 4]
    #[arg(help_heading = "Output", long, value_name = "N")]
    pub(crate) s3_streams: Option<usize>,
    /// How URLs map to file names when the manifest gives no path
    #[arg(help_heading = "Output", long, value_enum, default_value_t = LayoutArg::Flat)]
    pub(crate) layout: LayoutArg,
    /// Name files from a template when the manifest gives no path, e.g. '{host}/{id}{ext}' or
    /// '{stem}-{hash}{ext}'. Fields: {id} {host} {path} {name} {stem} {ext} {query} {hash} {line}
    #[arg(help_heading = "Output", long, value_name = "TEMPLATE", value_parser = haul::store::NameTemplate::parse)]
    pub(crate) name: Option<haul::store::NameTemplate>,
    /// Name files by the server's Content-Disposition (when the manifest gives no path); the name
    /// is sanitised and stays in the directory the URL maps to
    #[arg(help_heading = "Output", long)]
    pub(crate) content_disposition: bool,
    /// What to do when a destination file already exists
    #[arg(help_heading = "Output", long, value_enum, default_value_t = OnExistsArg::Skip)]
    pub(crate) on_exists: OnExistsArg,
    /// Transfers in flight at most [default: 32, or the configuration file's]
    #[arg(help_heading = "Politeness", short = 'j', long)]
    pub(crate) concurrency: Option<usize>,
    /// Transfers in flight at most to one host (host:port): the ceiling of its adaptive limit [default: 16, or the configuration file's]
    #[arg(help_heading = "Politeness", long)]
    pub(crate) per_host: Option<usize>,
    /// Keep every host at --per-host instead of adapting its limit to what it bears
    #[arg(help_heading = "Politeness", long)]
    pub(crate) no_adaptive: bool,
    /// Bytes per second at most over all transfers (e.g. 500k, 10M)
    #[arg(help_heading = "Politeness", long, value_parser = parse_size, value_name = "SIZE")]
    pub(crate) limit_rate: Option<u64>,
    /// Requests per second at most to each host: N/s, N/m or N/h (e.g. 50/s)
    #[arg(help_heading = "Politeness", long, value_parser = haul::Rate::parse, value_name = "N/s")]
    pub(crate) rate: Option<haul::Rate>,
    /// Retries after the first attempt (transient errors, 429/503)
    #[arg(help_heading = "Failures and limits", long, default_value_t = haul::DEFAULT_RETRIES)]
    pub(crate) retries: u32,
    /// Base of the exponential backoff with full jitter (e.g. 500ms, 2s)
    #[arg(help_heading = "Failures and limits", long, value_parser = parse_duration, default_value = "500ms")]
    pub(crate) retry_wait: Duration,
    /// Longest Retry-After that is obeyed (longer ones are cut to this)
    #[arg(help_heading = "Failures and limits", long, value_parser = parse_duration, default_value = "5m")]
    pub(crate) max_retry_wait: Duration,
    /// Connect timeout
    #[arg(help_heading = "Failures and limits", long, value_parser = parse_duration, default_value = "15s")]
    pub(crate) connect_timeout: Duration,
    /// Fail an attempt when no byte arrives for this long
    #[arg(help_heading = "Failures and limits", long, value_parser = parse_duration, default_value = "60s")]
    pub(crate) read_timeout: Duration,
    /// Abort (and retry) a transfer slower than this rate (e.g. 10k, 1MiB) over --lowest-speed-window
    #[arg(help_heading = "Failures and limits", long, value_parser = parse_size)]
    pub(crate) lowest_speed: Option<u64>,
    /// The window of --lowest-speed
    #[arg(help_heading = "Failures and limits", long, value_parser = parse_duration, default_value = "30s")]
    pub(crate) lowest_speed_window: Duration,
    /// Accept an empty (0-byte) body as a finished file even without a manifest size of 0
    #[arg(help_heading = "Failures and limits", long)]
    pub(crate) allow_empty: bool,
    /// Refuse files larger than this (e.g. 2GiB), with or without a Content-Length
    #[arg(help_heading = "Failures and limits", long, value_parser = parse_size)]
    pub(crate) max_size: Option<u64>,
    /// Threads that receive and parse responses. 2 (the default) is faster from about 100 KB per
    /// file up (1.27× on 150 KB files, 1.18× on 100 MB, on loopback); 1 spends a quarter less CPU
    /// on lists of tiny files at about the same speed
    #[arg(help_heading = "HTTP", long, default_value_t = 2, value_name = "N")]
    pub(crate) threads: usize,
    /// Connections per large file when one stream is slow (after 250 ms it would need over a
    /// second more): ranges fetched at once into one part file, each counted against the host's
    /// limit (1: always one stream). Needs a known size, byte ranges and an ETag or Last-Modified
    #[arg(help_heading = "HTTP", long, default_value_t = haul::DEFAULT_SPLIT, value_name = "N")]
    pub(crate) split: usize,
    /// Split only files of at least twice this size, with at most one connection per this size
    /// of the file
    #[arg(help_heading = "HTTP", long, value_parser = parse_size, default_value = "16MiB", value_name = "SIZE")]
    pub(crate) min_split_size: u64,
    /// Speak HTTP/2 without TLS (h2c) to every server
    #[arg(help_heading = "HTTP", long)]
    pub(crate) http2_prior_knowledge: bool,
    /// A header for every request ("Name: value"); repeatable
    #[arg(help_heading = "HTTP", short = 'H', long = "header", value_name = "HEADER")]
    pub(crate) headers: Vec<String>,
    /// The User-Agent header
    #[arg(help_heading = "HTTP", long)]
    pub(crate) user_agent: Option<String>,
    /// A header for one host only: HOST=Name: value (not sent to hosts a redirect leads to); repeatable
    #[arg(help_heading = "HTTP", long = "host-header", value_name = "HOST=HEADER")]
    pub(crate) host_headers: Vec<String>,
    /// A TOML configuration file: per_host, rate, limit_rate for every host and [hosts."PATTERN"] sections [default: $XDG_CONFIG_HOME/haul/config.toml if it exists]
    #[arg(help_heading = "Politeness", long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Basic auth: HOST=USER:PASSWORD (https to that host only) or ORIGIN=USER:PASSWORD with ORIGIN like http://host:8080 (that origin only); repeatable
    #[arg(help_heading = "HTTP", long = "auth", value_name = "HOST=USER:PASSWORD")]
    pub(crate) auth: Vec<String>,
    /// A bearer token: HOST=TOKEN (https to that host only) or ORIGIN=TOKEN (that origin only); repeatable
    #[arg(help_heading = "HTTP", long = "bearer", value_name = "HOST=TOKEN")]
    pub(crate) bearer: Vec<String>,
    /// Read credentials from ~/.netrc (or $NETRC); --auth and --bearer win over it
    #[arg(help_heading = "HTTP", long)]
    pub(crate) netrc: bool,
    /// Read credentials from this netrc file
    #[arg(help_heading = "HTTP", long, value_name = "FILE")]
    pub(crate) netrc_file: Option<PathBuf>,
    /// Also send credentials given for a bare host (--auth, --bearer, netrc) over plain http
    #[arg(help_heading = "HTTP", long)]
    pub(crate) allow_insecure_auth: bool,
    /// A header whose value is a secret, like Authorization: kept to the job's own origin across redirects; repeatable
    #[arg(help_heading = "HTTP", long = "secret-header", value_name = "NAME")]
    pub(crate) secret_headers: Vec<String>,
    /// Send cookies from a Netscape cookies.txt file (to the domains they belong to)
    #[arg(help_heading = "HTTP", long, value_name = "FILE")]
    pub(crate) cookies: Option<PathBuf>,
    /// Redirects followed at most (loops and non-http(s) targets are always refused)
    #[arg(help_heading = "HTTP", long, default_value_t = haul::DEFAULT_MAX_REDIRECTS)]
    pub(crate) max_redirects: usize,
    /// Let credentials, cookies and per-host headers follow redirects to this host; repeatable
    #[arg(help_heading = "HTTP", long = "trust-redirect-host", value_name = "HOST")]
    pub(crate) trusted_hosts: Vec<String>,
    /// Follow redirects from https to http (refused by default)
    #[arg(help_heading = "HTTP", long)]
    pub(crate) allow_https_downgrade: bool,
    /// Do not verify TLS certificates (dangerous: anyone on the path can change the files)
    #[arg(help_heading = "HTTP", long)]
    pub(crate) insecure: bool,
    /// Also trust the certificate authorities of this PEM file (beside the system's), or a
    /// server's own self-signed certificate given exactly
    #[arg(help_heading = "HTTP", long, value_name = "FILE")]
    pub(crate) ca_cert: Option<PathBuf>,
    /// Send every request through this proxy (http://, https:// or socks5:// URL)
    #[arg(help_heading = "HTTP", long, value_name = "URL")]
    pub(crate) proxy: Option<String>,
    /// Ignore the proxy environment variables (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY)
    #[arg(help_heading = "HTTP", long, conflicts_with = "proxy")]
    pub(crate) no_proxy: bool,
    /// The archive (journal of done and failed jobs): a SQLite file, or a PostgreSQL URL
    /// (postgres://user@host/db#NAME) [default: OUTPUT/.haul/archive.sqlite]
    #[arg(help_heading = "State", long, value_name = "FILE|URL")]
    pub(crate) archive: Option<PathBuf>,
    /// Keep no archive: nothing is skipped on a rerun, nothing resumes across runs
    #[arg(help_heading = "State", long, conflicts_with = "archive")]
    pub(crate) no_archive: bool,
    /// What keys a job in the archive
    #[arg(help_heading = "State", long, value_enum, default_value_t = ArchiveKeyArg::Id)]
    pub(crate) archive_key: ArchiveKeyArg,
    /// Wait for another haul process to release the archive instead of failing
    #[arg(help_heading = "State", long)]
    pub(crate) wait_archive: bool,
    /// fsync each file and its directory before recording it done (survives power loss)
    #[arg(help_heading = "State", long)]
    pub(crate) fsync: bool,
    /// A digest of every file for the archive, so `haul verify --full` can tell a file changed on
    /// disk: none, blake3 (fast) or sha256. A manifest's sha256 or md5 is verified whatever this
    /// says
    #[arg(help_heading = "State", long, value_parser = parse_digest, default_value = "none", value_name = "ALGO")]
    pub(crate) digest: haul::DigestKind,
    /// Retry the jobs the archive lists as failed (alone, or with more input)
    #[arg(help_heading = "State", long, conflicts_with = "no_archive")]
    pub(crate) retry_failed: bool,
    /// How to show progress
    #[arg(help_heading = "Display and logs", long, value_enum, default_value_t = ProgressArg::Auto)]
    pub(crate) progress: ProgressArg,
    /// Log requests, responses and decisions (retries, pauses, job ends) to stderr: -v retries and
    /// pauses, -vv every request and response, -vvv everything; URLs redacted, no header values
    #[arg(help_heading = "Display and logs", short, long, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Write those logs as JSON lines to FILE instead (at least at -vv's level)
    #[arg(help_heading = "Display and logs", long, value_name = "FILE")]
    pub(crate) log_file: Option<PathBuf>,
    /// Serve the run's counters (jobs by outcome, bytes, retries, in flight, the busiest hosts'
    /// limits and cool-downs, a worker's queue results) in Prometheus's text format at
    /// http://ADDR/metrics, e.g. 127.0.0.1:9898
    #[arg(help_heading = "Display and logs", long, value_name = "ADDR")]
    pub(crate) metrics_addr: Option<String>,
    /// Print nothing but errors: failed jobs, bad lines, fatal errors (no progress, no summary)
    #[arg(help_heading = "Display and logs", short, long)]
    pub(crate) quiet: bool,
    /// Write one JSON line per job (id, url, final_url, path, status, http_status, bytes, sha256,
    /// blake3, verified, duration_s, attempts, reason, error, line) and per bad line; "-" for
    /// standard output
    #[arg(help_heading = "Display and logs", long, value_name = "FILE")]
    pub(crate) report: Option<PathBuf>,
}

impl GetArgs {
    /// The configuration file's settings: `--config FILE`, else the default location if a file
    /// is there, else none.
    pub(crate) fn settings(&self) -> Result<crate::config::Settings> {
        match &self.config {
            Some(path) => crate::config::load(path),
            None => match crate::config::default_path().filter(|p| p.is_file()) {
                Some(path) => crate::config::load(&path),
                None => Ok(crate::config::Settings::default()),
            },
        }
    }

    /// The engine configuration these flags (and the configuration file) describe.
    pub(crate) fn config(&self) -> Result<haul::Config> {
        let file = self.settings()?;
        let concurrency = self
            .concurrency
            .or(file.concurrency)
            .unwrap_or(haul::DEFAULT_CONCURRENCY);
        let per_host = self.per_host.or(file.per_host).unwrap_or(haul::DEFAULT_PER_HOST);
        let mut headers = Vec::new();
        for header in &self.headers {
            let (name, value) = header
                .split_once(':')
                .with_context(|| format!("bad --header {header:?}: expected \"Name: value\""))?;
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        let archive = if self.no_archive {
            haul::ArchiveMode::Off
        } else if let Some(url) = self
            .archive
            .as_ref()
            .and_then(|p| p.to_str())
            .filter(|p| is_database(p))
        {
            haul::ArchiveMode::Postgres(url.to_owned())
        } else if let Some(path) = &self.archive {
            haul::ArchiveMode::Path(path.clone())
        } else {
            haul::ArchiveMode::Default
        };
        let (output, bucket) = self.output_target()?;
        let mut builder = haul::Config::builder(&output)
            .bucket(bucket)
            .concurrency(concurrency)
            .per_host(per_host)
            .adaptive(!self.no_adaptive && file.adaptive.unwrap_or(true))
            .rate(self.rate.or(file.rate))
            .limit_rate(self.limit_rate.or(file.limit_rate))
            .host_rules(file.rules.clone())
            .layout(match self.layout {
                LayoutArg::Flat => haul::Layout::Flat,
                LayoutArg::Mirror => haul::Layout::Mirror,
            })
            .name_template(self.name.clone())
            .on_exists(match self.on_exists {
                OnExistsArg::Skip => haul::OnExists::Skip,
                OnExistsArg::Overwrite => haul::OnExists::Overwrite,
                OnExistsArg::Rename => haul::OnExists::Rename,
                OnExistsArg::Fail => haul::OnExists::Fail,
            })
            .retries(self.retries)
            .retry_wait(self.retry_wait)
            .max_retry_wait(self.max_retry_wait)
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .lowest_speed(self.lowest_speed.map(|rate| (rate, self.lowest_speed_window)))
            .max_size(self.max_size)
            .http2_prior_knowledge(self.http2_prior_knowledge)
            .headers(headers)
            .archive(archive)
            .wait_archive(self.wait_archive)
            .fsync(self.fsync);
        builder = builder
            .host_headers(self.host_headers(&file)?)
            .credentials(self.credentials()?)
            .max_redirects(self.max_redirects)
            .allow_https_downgrade(self.allow_https_downgrade)
            .insecure(self.insecure)
            .proxy(self.proxy.clone())
            .no_proxy(self.no_proxy)
            .content_disposition(self.content_disposition)
            .ca_certs(self.ca_cert.clone())
            .trusted_hosts(self.trusted_hosts.clone())
            .secret_headers(self.secret_headers.clone())
            .allow_empty(self.allow_empty)
            .digest(self.digest)
            .split(self.split.max(1))
            .min_split_size(self.min_split_size.max(1));
        if let Some(agent) = &self.user_agent {
            builder = builder.user_agent(agent.clone());
        }
        if concurrency == 0 || per_host == 0 {
            bail!("--concurrency and --per-host must be at least 1");
        }
        Ok(builder.build())
    }
}

/// The staging directory of the bucket output `spec`: `dir` when given, else
/// `~/.cache/haul/stage/BUCKET/PREFIX`.
pub(crate) fn stage_dir(spec: &haul::BucketSpec, dir: Option<&PathBuf>) -> Result<PathBuf> {
    let (bucket, prefix) = spec.parse().map_err(|e| anyhow::anyhow!("-o: {e}"))?;
    if let Some(dir) = dir {
        return Ok(dir.clone());
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("no cache directory for an s3:// output's staging: pass --stage-dir DIR")?;
    Ok(cache.join("haul").join("stage").join(bucket).join(prefix))
}

impl GetArgs {
    /// The local output directory, and the bucket when the output is an s3:// URL (the
    /// directory then stages part files and holds haul's state).
    fn output_target(&self) -> Result<(PathBuf, Option<haul::BucketSpec>)> {
        let output = self.output.clone().unwrap_or_else(|| PathBuf::from("."));
        let Some(url) = output.to_str().filter(|o| o.starts_with("s3://")) else {
            if self.stage_dir.is_some()
                || self.s3_endpoint.is_some()
                || self.s3_copy_max.is_some()
                || self.s3_streams.is_some()
            {
                bail!(
                    "--stage-dir, --s3-endpoint, --s3-copy-max and --s3-streams are for an s3://BUCKET/PREFIX output (-o)"
                );
            }
            return Ok((output, None));
        };
        let spec = haul::BucketSpec {
            url: url.to_owned(),
            endpoint: self.s3_endpoint.clone(),
            copy_max: self.s3_copy_max,
            streams: self.s3_streams,
        };
        let stage = stage_dir(&spec, self.stage_dir.as_ref())?;
        Ok((stage, Some(spec)))
    }

    /// Per-host headers from the configuration file, then from --host-header.
    fn host_headers(&self, file: &crate::config::Settings) -> Result<Vec<(String, String, String)>> {
        let mut out = file.old_headers.clone();
        for spec in &self.host_headers {
            let parsed = spec.split_once('=').and_then(|(host, header)| {
                header
                    .split_once(':')
                    .map(|(name, value)| (host.to_owned(), name.trim().to_owned(), value.trim().to_owned()))
            });
            out.push(parsed.with_context(|| format!("bad --host-header {spec:?}: expected HOST=Name: value"))?);
        }
        Ok(out)
    }

    /// Credentials from --auth, --bearer, the netrc file and the cookies file.
    fn credentials(&self) -> Result<haul::Credentials> {
        let mut creds = haul::Credentials::default();
        if self.allow_insecure_auth {
            creds.allow_plain_http();
        }
        for spec in &self.auth {
            let (host, pair) = spec.split_once('=').context("--auth expects HOST=USER:PASSWORD")?;
            let (user, password) = match pair.split_once(':') {
                Some((user, password)) => (user, Some(password.to_owned())),
                None => (pair, None),
            };
            creds.set(
                host,
                haul::Auth::Basic {
                    user: user.to_owned(),
                    password,
                },
            );
        }
        for spec in &self.bearer {
            let (host, token) = spec.split_once('=').context("--bearer expects HOST=TOKEN")?;
            creds.set(host, haul::Auth::Bearer(token.to_owned()));
        }
        let netrc = self.netrc_file.clone().or_else(|| {
            self.netrc.then(|| {
                std::env::var_os("NETRC").map_or_else(
                    || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".netrc"),
                    PathBuf::from,
                )
            })
        });
        if let Some(path) = netrc {
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            creds
                .add_netrc(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        if let Some(path) = &self.cookies {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            creds
                .add_cookies_txt(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        Ok(creds)
    }
}

/// Parses `1.5`, `250ms`, `30s`, `5m`, `1h` into a duration (a bare number is seconds).
/// True for an archive given as a PostgreSQL URL.
pub(crate) fn is_database(archive: &str) -> bool {
    archive.starts_with("postgres://") || archive.starts_with("postgresql://")
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a duration: {text:?} (try 500ms, 30s, 5m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("bad duration {text:?}: {e}"))
}

/// Parses `1024`, `10k`, `1.5M`, `2GiB`, `500KB` into bytes (k/M/G are powers of 1024).
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("not a size: {text:?} (try 10M, 2GiB)"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let multiplier: f64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(format!("unknown unit in {text:?} (use k, M, G, T)")),
    };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "sizes are positive and far below 2^53"
    )]
    Ok((value * multiplier).round() as u64)
}

/// `--digest`: blake3, sha256 or none.
fn parse_digest(text: &str) -> Result<haul::DigestKind, String> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("5y").is_err());
        assert_eq!(parse_size("10k").unwrap(), 10 * 1024);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("1.5M").unwrap(), 1_572_864);
        assert_eq!(parse_size("7").unwrap(), 7);
        assert!(parse_size("3 parsecs").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
