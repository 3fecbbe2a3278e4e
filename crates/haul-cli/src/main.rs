//! The `haul` command: parses flags, runs the engine, draws progress, maps the result to an
//! exit code. All printing of the project happens here.

mod args;
mod config;
mod exit;
mod metrics;
mod progress;
mod queue;
mod report;

use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::Parser as _;

use args::{ArchiveCommand, ArchiveKeyArg, Cli, Command, FormatArg, GetArgs};
use exit::Exit;

/// A failure that decides the exit code.
#[derive(Debug)]
struct Failure {
    exit: Exit,
    error: anyhow::Error,
}

fn fail(exit: Exit, error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        exit,
        error: error.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // With --progress json, even an error is a JSON line.
    let json = matches!(&cli.command, Command::Get(args) if args.progress == args::ProgressArg::Json && !args.quiet);
    let result = match cli.command {
        Command::Get(args) => get(*args),
        Command::Enqueue(a) => queue::enqueue(&a),
        Command::Work(a) => queue::work(*a),
        Command::Status(a) => match queue::queue_url(a.queue.as_deref(), a.job.as_deref()) {
            Some(url) => queue::status(&url, a.job.as_deref().unwrap_or(haul::queue::DEFAULT_NAME), a.json)
                .map_err(|e| fail(Exit::Fatal, e)),
            None if a.json => Err(fail(
                Exit::Usage,
                anyhow::anyhow!("--json is for queues: add --queue URL (or set HAUL_QUEUE and give --job)"),
            )),
            None => status(a.archive.as_deref()).map_err(|e| fail(Exit::Usage, e)),
        },
        Command::Verify(a) => verify(&a).map_err(|e| fail(Exit::Fatal, e)),
        Command::Failed(a) => match queue::queue_url(a.queue.as_deref(), a.job.as_deref()) {
            Some(url) => queue::failed(&url, a.job.as_deref().unwrap_or(haul::queue::DEFAULT_NAME))
                .map_err(|e| fail(Exit::Fatal, e)),
            None => failed(a.archive.archive.as_deref()).map_err(|e| fail(Exit::Usage, e)),
        },
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "haul", &mut std::io::stdout());
            Ok(Exit::Success)
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            match clap_mangen::Man::new(command).render(&mut std::io::stdout()) {
                // `haul man | head`: a closed pipe is a normal end.
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(fail(Exit::Fatal, e)),
                _ => Ok(Exit::Success),
            }
        }
        Command::Gc(a) => gc(&a),
        Command::Archive(ArchiveCommand::Import { file, archive }) => {
            import(&file, archive.as_deref()).map_err(|e| fail(Exit::Fatal, e))
        }
    };
    match result {
        Ok(exit) => exit.into(),
        Err(Failure { exit, error }) => {
            if json {
                let line = serde_json::json!({
                    "type": "error",
                    "message": format!("{error:#}"),
                    "exit_code": exit as i32,
                });
                let _ = writeln!(std::io::stderr(), "{line}");
            } else {
                let _ = writeln!(std::io::stderr(), "error: {error:#}");
            }
            exit.into()
        }
    }
}

type Jobs = Box<dyn Iterator<Item = Result<haul::Job, haul::ManifestError>> + Send>;

/// The format the user named (`--format`) or the file's name names (`.csv`, `.jsonl`); `None`
/// when only the content can tell.
fn named_format(format: Option<FormatArg>, path: &Path) -> Option<haul::Format> {
    match format {
        Some(FormatArg::Plain) => Some(haul::Format::Plain),
        Some(FormatArg::Jsonl) => Some(haul::Format::Jsonl),
        Some(FormatArg::Csv) => Some(haul::Format::Csv),
        None if path == Path::new("-") => None,
        None => haul::Format::named_by(path),
    }
}

fn key_of(key: ArchiveKeyArg) -> haul::ArchiveKey {
    match key {
        ArchiveKeyArg::Id => haul::ArchiveKey::IdOrUrl,
        ArchiveKeyArg::Url => haul::ArchiveKey::Url,
    }
}

/// Opens the manifest and looks at its start: a directory, binary data or a CSV without a `url`
/// column is a usage error; a format the name does not give is read off the content. Also
/// says whether the manifest is empty (blank lines and comments only).
fn open_manifest(format: Option<FormatArg>, key: ArchiveKeyArg, path: &Path) -> Result<(Jobs, bool), Failure> {
    let shown = if path == Path::new("-") {
        "standard input".to_owned()
    } else {
        path.display().to_string()
    };
    let usage = |text: String| fail(Exit::Usage, anyhow::anyhow!(text));
    let mut reader: Box<dyn BufRead + Send> = if path == Path::new("-") {
        Box::new(BufReader::with_capacity(256 * 1024, std::io::stdin()))
    } else {
        if path.is_dir() {
            return Err(usage(format!(
                "the manifest {shown} is a directory: give a file that lists URLs (-i FILE)"
            )));
        }
        let file = File::open(path)
            .with_context(|| format!("cannot open the manifest {shown}"))
            .map_err(|e| fail(Exit::Usage, e))?;
        Box::new(BufReader::with_capacity(256 * 1024, file))
    };
    let named = named_format(format, path);
    let sample = reader
        .fill_buf()
        .with_context(|| format!("cannot read the manifest {shown}"))
        .map_err(|e| fail(Exit::Usage, e))?;
    let sniffed = haul::manifest::sniff(sample, named)
        .map_err(|why| usage(format!("cannot use {shown} as a manifest: {why}")))?;
    let (format, empty) = match sniffed {
        haul::manifest::Sniffed::Looks(looks) => (named.unwrap_or(looks), false),
        haul::manifest::Sniffed::Empty => (named.unwrap_or(haul::Format::Plain), true),
    };
    Ok((
        Box::new(haul::ManifestReader::new(reader, format).archive_key(key_of(key))),
        empty,
    ))
}

/// The URLs given as arguments, as jobs; one that is not a URL haul can fetch is a usage error
/// with a hint (a file name: `-i`; `htp://`, `http//`: the likely URL).
fn url_jobs(urls: &[String]) -> Result<Vec<haul::Job>, Failure> {
    urls.iter()
        .map(|text| {
            haul::parse_url(text).map(haul::Job::new).map_err(|reason| {
                let hint = url_hint(text).map_or_else(String::new, |h| format!("; {h}"));
                fail(
                    Exit::Usage,
                    anyhow::anyhow!(
                        "the argument {:?} is not a URL haul can fetch: {reason}{hint}",
                        cut(text)
                    ),
                )
            })
        })
        .collect()
}

/// At most the part of an argument before its query or credentials (which may be secrets).
fn cut(text: &str) -> String {
    match text.find(['?', '@']) {
        Some(i) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

fn url_hint(text: &str) -> Option<String> {
    if Path::new(text).is_file() {
        return Some(format!("did you mean `-i {text}` (read the URLs listed in that file)?"));
    }
    let (scheme, rest) = text
        .split_once("://")
        .or_else(|| text.split_once(":/"))
        .or_else(|| text.split_once("//"))
        .or_else(|| text.split_once(':'))?;
    let scheme = scheme.to_ascii_lowercase();
    let rest = rest.trim_start_matches('/');
    let fixed = if ["http", "htp", "htt", "hhtp", "htpp", "ttp", "hmtp"].contains(&scheme.as_str()) {
        "http"
    } else if ["https", "htps", "htts", "httsp", "hhtps", "ttps", "htpps"].contains(&scheme.as_str()) {
        "https"
    } else if scheme.is_empty() || rest.is_empty() {
        return None;
    } else {
        return Some("only http:// and https:// URLs can be fetched".to_owned());
    };
    Some(format!("did you mean {}?", cut(&format!("{fixed}://{rest}"))))
}

/// Reads the whole manifest once and refuses it if any line is bad (`--strict`).
fn check_strict(args: &GetArgs, path: &Path) -> Result<(), Failure> {
    if path == Path::new("-") {
        return Err(fail(
            Exit::Usage,
            anyhow::anyhow!("--strict needs a manifest file it can read twice, not standard input"),
        ));
    }
    let mut bad = Vec::new();
    let mut count = 0u64;
    for item in open_manifest(args.format, args.archive_key, path)?.0 {
        if let Err(e) = item {
            count += 1;
            if bad.len() < 20 {
                bad.push(e.to_string());
            }
        }
    }
    if count == 0 {
        return Ok(());
    }
    let mut text = format!(
        "{count} bad line(s) in {}; nothing was downloaded (--strict)",
        path.display()
    );
    for line in bad {
        text.push_str("\n  ");
        text.push_str(&line);
    }
    Err(fail(Exit::Usage, anyhow::anyhow!(text)))
}

/// `haul gc`: the staging keys interrupted uploads left in a bucket output, listed (URL, size,
/// age, tab-separated) and removed; and the multipart uploads that the staging directory
/// records for runs no longer running, aborted.
fn gc(args: &args::GcArgs) -> Result<Exit, Failure> {
    let spec = haul::BucketSpec {
        url: args.output.clone(),
        endpoint: args.s3_endpoint.clone(),
        copy_max: None,
        streams: None,
    };
    spec.parse()
        .map_err(|e| fail(Exit::Usage, anyhow::anyhow!("-o: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| fail(Exit::Fatal, e))?;
    let found = runtime
        .block_on(haul::store::collect_garbage(&spec, args.older_than, args.dry_run))
        .map_err(|e| fail(Exit::Fatal, e))?;
    if !args.dry_run {
        let stage = args::stage_dir(&spec, args.stage_dir.as_ref()).map_err(|e| fail(Exit::Usage, e))?;
        let aborted = runtime
            .block_on(haul::store::abort_unfinished(&spec, &stage))
            .map_err(|e| fail(Exit::Fatal, e))?;
        if aborted > 0 {
            let _ = writeln!(
                std::io::stderr(),
                "aborted {aborted} unfinished uploads recorded in {} by runs that stopped",
                stage.display()
            );
        }
    }
    let mut out = std::io::stdout().lock();
    let mut bytes = 0;
    for leftover in &found {
        bytes += leftover.size;
        let _ = writeln!(out, "{}\t{}\t{}s", leftover.url, leftover.size, leftover.age.as_secs());
    }
    let verb = if args.dry_run { "found" } else { "removed" };
    let _ = writeln!(
        std::io::stderr(),
        "{verb} {} staging keys ({bytes} bytes) older than {}s",
        found.len(),
        args.older_than.as_secs()
    );
    Ok(Exit::Success)
}

/// Writes the archive's failed jobs to a spool manifest (so they stream, never all in memory).
fn spool_failed(config: &haul::Config) -> Result<PathBuf, Failure> {
    let location = config
        .archive_location()
        .ok_or_else(|| fail(Exit::Usage, anyhow::anyhow!("--retry-failed needs an archive")))?;
    let reader = haul::archive::ArchiveReader::open_at(&location).map_err(|e| fail(Exit::Usage, e))?;
    let state = config.output_dir.join(haul::STATE_DIR);
    std::fs::create_dir_all(&config.output_dir).map_err(|e| fail(Exit::Fatal, e))?;
    match std::fs::symlink_metadata(&state) {
        Ok(meta) if !meta.is_dir() => {
            return Err(fail(
                Exit::Fatal,
                anyhow::anyhow!(
                    "{} must be haul's own directory, but it is a symlink or a file",
                    state.display()
                ),
            ));
        }
        Ok(_) => {}
        Err(_) => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&state)
            .map_err(|e| fail(Exit::Fatal, e))?,
    }
    // haul's own file: an old one is removed, never followed, and the new one created exclusively
    // (O_EXCL does not follow a symlink planted at the name).
    let spool = state.join("retry-failed.jsonl");
    match std::fs::remove_file(&spool) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(Exit::Fatal, e)),
        _ => {}
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&spool)
        .with_context(|| format!("cannot create {}", spool.display()))
        .map_err(|e| fail(Exit::Fatal, e))?;
    let mut out = std::io::BufWriter::new(file);
    reader
        .for_each_failed(|line| writeln!(out, "{line}").map_err(|e| haul::Error::Archive(e.to_string())))
        .map_err(|e| fail(Exit::Fatal, e))?;
    out.flush().map_err(|e| fail(Exit::Fatal, e))?;
    Ok(spool)
}

fn get(args: GetArgs) -> Result<Exit, Failure> {
    let config = args.config().map_err(|e| fail(Exit::Usage, e))?;
    if let Some(note) = args.settings().ok().and_then(|s| s.note) {
        let _ = writeln!(std::io::stderr(), "note: {note}");
    }
    if config.insecure {
        let _ = writeln!(
            std::io::stderr(),
            "warning: --insecure: TLS certificates are NOT verified; anyone on the network path can change what is downloaded"
        );
    }
    if args.input.is_none() && args.urls.is_empty() && !args.retry_failed {
        return Err(fail(
            Exit::Usage,
            anyhow::anyhow!("nothing to download: give URLs, --input FILE (or - for stdin), or --retry-failed"),
        ));
    }
    // Every usage error before anything is done.
    let arguments = url_jobs(&args.urls)?;
    if args.strict
        && let Some(input) = &args.input
    {
        check_strict(&args, input)?;
    }
    let manifest = match &args.input {
        Some(input) => {
            let (manifest, empty) = open_manifest(args.format, args.archive_key, input)?;
            if empty && !args.quiet {
                let _ = writeln!(
                    std::io::stderr(),
                    "warning: the manifest {} lists no URLs (blank lines and comments only)",
                    input.display()
                );
            }
            Some(manifest)
        }
        None => None,
    };
    if args.output.is_none() && !args.quiet {
        let here = std::env::current_dir().map_or_else(|_| ".".into(), |d| d.display().to_string());
        let _ = writeln!(
            std::io::stderr(),
            "note: saving into the current directory, {here} (-o DIR to choose)"
        );
    }
    let mut jobs: Jobs = Box::new(arguments.into_iter().map(Ok));
    if args.dry_run {
        if args.retry_failed {
            return Err(fail(
                Exit::Usage,
                anyhow::anyhow!("--dry-run does not combine with --retry-failed"),
            ));
        }
        let jobs: Jobs = match manifest {
            Some(manifest) => Box::new(jobs.chain(manifest)),
            None => jobs,
        };
        return dry_run(&config, jobs).map_err(|e| fail(Exit::Fatal, e));
    }
    if args.retry_failed {
        let spool = spool_failed(&config)?;
        let failed = haul::ManifestReader::new(
            BufReader::new(File::open(&spool).map_err(|e| fail(Exit::Fatal, e))?),
            haul::Format::Jsonl,
        );
        jobs = Box::new(jobs.chain(failed));
    }
    if let Some(manifest) = manifest {
        jobs = Box::new(jobs.chain(manifest));
    }
    let report = open_report(args.report.as_deref())?;
    let runtime = network_runtime(args.threads)?;
    runtime.block_on(run(args, config, jobs, report, None))
}

/// The runtime that receives responses (`--threads`). One thread has no cross-thread wake-ups
/// per file and wins on tiny files; two receive and parse in parallel and win from ~100 KB up
/// (README, "Measured figures"). Hashing and writing of large bodies run on the blocking pool
/// either way.
pub(crate) fn network_runtime(threads: usize) -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads.min(64));
        b
    };
    builder.enable_all().build().map_err(|e| fail(Exit::Fatal, e))
}

type Report = Option<Box<dyn std::io::Write + Send>>;

/// Opens `--report` (a file, or "-" for standard output).
fn open_report(path: Option<&Path>) -> Result<Report, Failure> {
    Ok(match path {
        Some(path) if path == Path::new("-") => Some(Box::new(std::io::stdout())),
        Some(path) => Some(Box::new(
            File::create(path)
                .with_context(|| format!("cannot create the report {}", path.display()))
                .map_err(|e| fail(Exit::Usage, e))?,
        )),
        None => None,
    })
}

/// Runs the engine with the display, the report and the signal handlers; with a queue
/// `worker`, results also go to the queue and host pauses are shared with the fleet.
async fn run(
    args: GetArgs,
    config: haul::Config,
    jobs: Jobs,
    report: Report,
    worker: Option<&haul::queue::Worker>,
) -> Result<Exit, Failure> {
    let engine = haul::Engine::new(config);
    if let Some(worker) = worker {
        worker.attach(engine.fleet_link(), engine.canceller());
    }
    if let Some(addr) = &args.metrics_addr {
        let sources = metrics::Sources {
            monitor: engine.monitor(),
            queue: worker.map(haul::queue::Worker::totals),
        };
        metrics::serve(addr, sources)
            .await
            .with_context(|| format!("--metrics-addr: cannot listen on {addr}"))
            .map_err(|e| fail(Exit::Usage, e))?;
    }
    let mut mode = if args.quiet {
        args::ProgressArg::None
    } else {
        args.progress
    };
    if args.verbose > 0 && args.log_file.is_none() && mode == args::ProgressArg::Auto {
        // Log lines on stderr and redrawn bars do not mix: plain progress lines instead.
        mode = args::ProgressArg::Plain;
    }
    start_logs(&args, mode == args::ProgressArg::Json).map_err(|e| fail(Exit::Usage, e))?;
    let display = progress::Display::start(mode, engine.monitor());
    if let Some(input) = args.input.as_deref().filter(|p| *p != Path::new("-")) {
        count_ahead(input, engine.monitor());
    }
    let reporter = Arc::new(report::CliReporter::new(report, display.clone(), args.quiet));
    let canceller = engine.canceller();
    let signal_display = display.clone();
    let stopped_by = Arc::new(std::sync::Mutex::new(Exit::Interrupted));
    let stopped = Arc::clone(&stopped_by);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut signal = async || match &mut term {
            Some(term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => Exit::Interrupted,
                _ = term.recv() => Exit::Terminated,
            },
            None => {
                let _ = tokio::signal::ctrl_c().await;
                Exit::Interrupted
            }
        };
        let first = signal().await;
        *stopped.lock().expect("signal") = first;
        signal_display.println("interrupting: finishing the archive; press Ctrl-C again to quit at once");
        canceller.cancel();
        let second = signal().await;
        // A second signal: leave now. Nothing unfinished was recorded done, .part files stay.
        std::process::exit(second as i32);
    });
    let events: Arc<dyn haul::Reporter> = match worker {
        Some(worker) => worker.reporter(Arc::clone(&reporter) as Arc<dyn haul::Reporter>),
        None => Arc::clone(&reporter) as Arc<dyn haul::Reporter>,
    };
    let result = engine.run(jobs, events).await;
    // The display ends before anything else is printed: no redraw over the summary.
    display.finish().await;
    let summary = result.map_err(|e| fail(Exit::Fatal, e))?;
    reporter.finish().map_err(|e| fail(Exit::Fatal, e))?;
    let exit = if summary.fatal.is_some() {
        Exit::Fatal
    } else if summary.interrupted {
        *stopped_by.lock().expect("signal")
    } else if summary.failed_total() > 0 || summary.bad_lines > 0 {
        Exit::SomeFailed
    } else {
        Exit::Success
    };
    if display.is_json() {
        display.event(&report::summary_json(&summary, exit as i32));
    } else if !args.quiet {
        report::print_summary(&summary);
    } else if let Some(fatal) = &summary.fatal {
        let _ = writeln!(std::io::stderr(), "error: {fatal}");
    }
    Ok(exit)
}

/// `--dry-run`: the engine's naming and the archive's answers, without a request and without
/// creating anything. One line per job on stdout: `fetch URL PATH`, `skip URL PATH REASON`,
/// `refuse URL - REASON`, `bad LINE - REASON` (tab-separated); counts on stderr.
fn dry_run(config: &haul::Config, jobs: Jobs) -> Result<Exit> {
    let archive = match config.archive_location() {
        Some(haul::archive::Location::File(path)) if !path.exists() => None,
        Some(location) => Some(haul::archive::ArchiveReader::open_at(&location)?),
        None => None,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let (mut fetch, mut skip, mut refuse, mut bad) = (0u64, 0u64, 0u64, 0u64);
    let mut claimed = std::collections::HashSet::new();
    for item in jobs {
        let job = match item {
            Ok(job) => job,
            Err(e) => {
                bad += 1;
                writeln!(out, "bad\t{}\t-\t{}", e.line, e.reason)?;
                continue;
            }
        };
        let url = job.safe_url().to_string();
        let rel = match config.destination(&job) {
            Ok(rel) => rel,
            Err(why) => {
                refuse += 1;
                writeln!(out, "refuse\t{url}\t-\t{why}")?;
                continue;
            }
        };
        let row = match &archive {
            Some(reader) => reader.lookup(&job.id)?,
            None => None,
        };
        let rel = rel.as_str().to_owned();
        let on_disk = config.output_dir.join(&rel);
        let verdict = match row {
            Some(row) if row.status == haul::archive::RowStatus::Done && (row.path.is_none() || on_disk.exists()) => {
                Some("archived")
            }
            _ if !claimed.insert(rel.clone()) => Some("duplicate path"),
            _ if on_disk.exists() => match config.on_exists {
                haul::OnExists::Skip => Some("exists: kept if it matches the manifest's size and checksums"),
                haul::OnExists::Fail => Some("exists: would fail (--on-exists fail)"),
                haul::OnExists::Overwrite | haul::OnExists::Rename => None,
            },
            _ => None,
        };
        match verdict {
            Some(reason) => {
                skip += 1;
                writeln!(out, "skip\t{url}\t{rel}\t{reason}")?;
            }
            None => {
                fetch += 1;
                writeln!(out, "fetch\t{url}\t{rel}")?;
            }
        }
    }
    out.flush()?;
    let _ = writeln!(
        std::io::stderr(),
        "dry run: {fetch} to fetch, {skip} to skip, {refuse} refused, {bad} bad lines; nothing was requested or written"
    );
    Ok(if refuse + bad > 0 {
        Exit::SomeFailed
    } else {
        Exit::Success
    })
}

/// Starts the logs of `-v` (stderr) or `--log-file` (JSON lines): haul's own events only.
fn start_logs(args: &GetArgs, json: bool) -> Result<()> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let level = match (args.verbose, args.log_file.is_some()) {
        (0, false) => return Ok(()),
        (0..=2, true) | (2, false) => tracing::Level::DEBUG,
        (1, false) => tracing::Level::INFO,
        _ => tracing::Level::TRACE,
    };
    let filter = tracing_subscriber::filter::Targets::new().with_target("haul", level);
    let writer = match &args.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open the log file {}", path.display()))?;
            BoxMakeWriter::new(std::sync::Mutex::new(file))
        }
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer);
    // JSON lines in a file, or beside --progress json; a compact line for a person otherwise.
    if json || args.log_file.is_some() {
        tracing_subscriber::registry()
            .with(layer.json().with_filter(filter))
            .try_init()?;
    } else {
        tracing_subscriber::registry()
            .with(layer.compact().with_filter(filter))
            .try_init()?;
    }
    Ok(())
}

/// Counts the manifest's lines in the background (blank lines and comments aside), so the
/// display shows a total from the start instead of "so far" (the reader's exact count
/// replaces it at the end). A few hundred MB/s: a 10-million-line list takes about a second.
fn count_ahead(path: &Path, monitor: Arc<haul::Monitor>) {
    let Ok(file) = File::open(path) else { return };
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(1024 * 1024, file);
        let (mut count, mut line) = (0u64, Vec::new());
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = line.trim_ascii();
                    count += u64::from(!text.is_empty() && !text.starts_with(b"#"));
                }
            }
        }
        monitor.set_total_hint(count);
    });
}

/// An archive path from an argument that may be the file or an output directory (a path that
/// does not exist yet is a directory unless it ends in .sqlite, .sqlite3 or .db).
fn resolve_archive(arg: Option<&Path>) -> haul::archive::Location {
    let arg = arg.unwrap_or(Path::new("."));
    if let Some(url) = arg.to_str().filter(|a| args::is_database(a)) {
        return haul::archive::Location::parse(url);
    }
    let names_a_file = arg
        .extension()
        .is_some_and(|e| ["sqlite", "sqlite3", "db"].iter().any(|x| e == *x));
    haul::archive::Location::File(if arg.is_dir() || (!arg.exists() && !names_a_file) {
        arg.join(haul::STATE_DIR).join(haul::DEFAULT_ARCHIVE_NAME)
    } else {
        arg.to_owned()
    })
}

fn status(arg: Option<&Path>) -> Result<Exit> {
    let location = resolve_archive(arg);
    let reader = haul::archive::ArchiveReader::open_at(&location)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "archive: {}", location.display())?;
    for (status, count, bytes) in reader.counts()? {
        writeln!(out, "{status:>8}: {count} jobs, {}", progress::human_bytes(bytes))?;
    }
    let groups = reader.failure_groups()?;
    if !groups.is_empty() {
        writeln!(out, "failures by reason and host:")?;
        for g in groups {
            writeln!(
                out,
                "  {:>6} × {} ({}) on {}: e.g. {}",
                g.count, g.reason, g.class, g.host, g.example
            )?;
        }
    }
    Ok(Exit::Success)
}

/// Prints the failed jobs as the manifest lines they were: real URLs (a manifest is data; the
/// display and the logs are what redact), their headers but secret ones, sizes, checksums and
/// original lines, so `haul failed | haul get -i - --format jsonl` runs them unchanged.
fn failed(arg: Option<&Path>) -> Result<Exit> {
    let reader = haul::archive::ArchiveReader::open_at(&resolve_archive(arg))?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result =
        reader.for_each_failed(|line| writeln!(out, "{line}").map_err(|e| haul::Error::Archive(e.to_string())));
    match result {
        // A closed pipe (`haul failed | head`) is a normal end.
        Err(haul::Error::Archive(msg)) if msg.contains("Broken pipe") => return Ok(Exit::Success),
        other => other?,
    }
    let _ = out.flush();
    Ok(Exit::Success)
}

/// `haul verify`: done rows against the disk; wrong ones are marked stale (fetched again, and
/// replaced, by the next run).
fn verify(args: &args::VerifyArgs) -> Result<Exit> {
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    if let Some(bucket) = haul::store::staged_for(&dir) {
        anyhow::bail!(
            "{} stages uploads to {bucket}: haul verify checks files in a local output directory, and the \
             bucket's objects are not there (nothing was marked)",
            dir.display()
        );
    }
    let location = match args
        .archive
        .as_ref()
        .and_then(|a| a.to_str())
        .filter(|a| args::is_database(a))
    {
        Some(url) => haul::archive::Location::parse(url),
        None => {
            let path = args
                .archive
                .clone()
                .unwrap_or_else(|| dir.join(haul::STATE_DIR).join(haul::DEFAULT_ARCHIVE_NAME));
            if !path.exists() {
                anyhow::bail!("no archive at {} (pass --archive FILE)", path.display());
            }
            haul::archive::Location::File(path)
        }
    };
    let archive = haul::archive::Archive::open_at(&location, false)?;
    let mut shown = Vec::new();
    let (checked, stale) = archive.mark_stale(|row| {
        let file = dir.join(&row.path);
        let why = match std::fs::symlink_metadata(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("missing".to_owned()),
            Err(e) => Some(format!("cannot be read: {e}")),
            Ok(meta) if !meta.file_type().is_file() => Some("not a regular file".to_owned()),
            Ok(meta) if row.size.is_some_and(|size| size != meta.len()) => Some(format!(
                "corrupt: {} bytes, {} recorded",
                meta.len(),
                row.size.unwrap_or_default()
            )),
            Ok(_) if args.full && (row.blake3.is_some() || row.sha256.is_some()) => {
                // The recorded digest: BLAKE3 (the default), else SHA-256 (older archives,
                // `--digest sha256`).
                let blake3 = row.blake3.is_some();
                match haul::store::hash_file(&file, blake3, !blake3) {
                    Ok((_, found)) => {
                        let (got, want, name) = if blake3 {
                            (found.blake3, &row.blake3, "BLAKE3")
                        } else {
                            (found.sha256, &row.sha256, "SHA-256")
                        };
                        if got.map(|d| haul::to_hex(&d)).as_ref() == want.as_ref() {
                            None
                        } else {
                            Some(format!("corrupt: its {name} differs from the one recorded"))
                        }
                    }
                    Err(e) => Some(format!("cannot be read: {e}")),
                }
            }
            Ok(_) => None,
        };
        if let Some(why) = &why
            && shown.len() < 20
        {
            shown.push(format!("  {}: {why}", row.path));
        }
        why
    })?;
    let mut out = std::io::stdout().lock();
    for line in &shown {
        writeln!(out, "{line}")?;
    }
    if stale > shown.len() as u64 {
        writeln!(out, "  (and {} more)", stale - shown.len() as u64)?;
    }
    let how = if args.full {
        "exists, size, digest"
    } else {
        "exists, size"
    };
    writeln!(
        out,
        "checked {checked} done file(s) ({how}): {stale} missing or corrupt{}",
        if stale > 0 {
            "; the next `haul get` with the same list fetches them again"
        } else {
            ""
        }
    )?;
    Ok(if stale > 0 { Exit::SomeFailed } else { Exit::Success })
}

fn import(file: &Path, archive: Option<&Path>) -> Result<Exit> {
    let location = resolve_archive(archive);
    let archive = haul::archive::Archive::open_at(&location, false)?;
    let added = if file == Path::new("-") {
        haul::archive::import_ids(&archive, std::io::stdin().lock())?
    } else {
        let input = File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        haul::archive::import_ids(&archive, BufReader::new(input))?
    };
    let _ = writeln!(
        std::io::stdout(),
        "imported {added} new id(s) into {}",
        location.display()
    );
    Ok(Exit::Success)
}
