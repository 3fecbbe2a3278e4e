//! `haul enqueue`, `haul work`, and the queue's side of `haul status` and `haul failed`.

use anyhow::Result;
use std::io::Write as _;

use crate::args::{EnqueueArgs, WorkArgs};
use crate::exit::Exit;
use crate::{Failure, fail, open_manifest, progress};

/// Bad lines shown one by one at most (the rest are counted).
const SHOWN_BAD: u64 = 20;

/// The queue URL of `status`/`failed`: `--queue`, else `$HAUL_QUEUE` when `--job` names one.
pub(crate) fn queue_url(queue: Option<&str>, job: Option<&str>) -> Option<String> {
    queue
        .map(str::to_owned)
        .or_else(|| job.and_then(|_| std::env::var("HAUL_QUEUE").ok()))
}

pub(crate) fn enqueue(args: &EnqueueArgs) -> Result<Exit, Failure> {
    let (jobs, empty) = open_manifest(args.format, args.archive_key, &args.input)?;
    if empty {
        let _ = writeln!(
            std::io::stderr(),
            "warning: the manifest {} lists no URLs (blank lines and comments only)",
            args.input.display()
        );
    }
    let mut queue =
        haul::queue::Queue::connect(&args.queue.queue, &args.queue.job).map_err(|e| fail(Exit::Fatal, e))?;
    let started = std::time::Instant::now();
    let mut shown = 0u64;
    let counts = queue
        .enqueue(jobs, &args.secret_headers, |bad| {
            shown += 1;
            if shown <= SHOWN_BAD {
                let _ = writeln!(std::io::stderr(), "bad line {}: {}", bad.line, bad.reason);
            }
        })
        .map_err(|e| fail(Exit::Fatal, e))?;
    let seconds = started.elapsed().as_secs_f64();
    let lines = counts.new + counts.duplicate + counts.bad;
    let _ = writeln!(
        std::io::stderr(),
        "queue {}: {} new, {} duplicate, {} bad ({lines} lines in {seconds:.1} s)",
        args.queue.job,
        counts.new,
        counts.duplicate,
        counts.bad
    );
    Ok(if counts.bad > 0 {
        Exit::SomeFailed
    } else {
        Exit::Success
    })
}

pub(crate) fn work(args: WorkArgs) -> Result<Exit, Failure> {
    let usage = |text: &str| fail(Exit::Usage, anyhow::anyhow!("{text}"));
    let get = &args.get;
    if get.input.is_some() || !get.urls.is_empty() {
        return Err(usage(
            "haul work takes its jobs from the queue: add them with `haul enqueue -i FILE`",
        ));
    }
    if get.dry_run || get.strict {
        return Err(usage(
            "--dry-run and --strict are for haul get; haul work runs what the queue holds",
        ));
    }
    if get.archive.is_some() || get.no_archive {
        return Err(usage(
            "haul work records into the queue: --archive and --no-archive do not apply",
        ));
    }
    let mut config = get.config().map_err(|e| fail(Exit::Usage, e))?;
    if get.retry_failed {
        let mut queue =
            haul::queue::Queue::connect(&args.queue.queue, &args.queue.job).map_err(|e| fail(Exit::Fatal, e))?;
        let requeued = queue.retry_failed().map_err(|e| fail(Exit::Fatal, e))?;
        let _ = writeln!(
            std::io::stderr(),
            "queue {}: {requeued} failed jobs queued again",
            args.queue.job
        );
    }
    let mut options = haul::queue::WorkerOptions {
        lease: args.lease,
        max_attempts: args.max_attempts.max(1),
        follow: args.follow,
        claim_batch: (config.concurrency * 8).clamp(128, 1024),
        // Beyond what the engine holds (its window), so claims come in batches of hundreds.
        per_host_claim: (config.concurrency * 4 + 64 + config.per_host * 8).clamp(128, 2048),
        ..haul::queue::WorkerOptions::default()
    };
    if let Some(name) = &args.worker_name {
        options.label.clone_from(name);
    }
    let worker =
        haul::queue::Worker::start(&args.queue.queue, &args.queue.job, options).map_err(|e| fail(Exit::Fatal, e))?;
    config.archive = haul::ArchiveMode::Off;
    config.shared_output = Some(worker.tag());
    let output_dir = config.output_dir.clone();
    sweep(&worker, &output_dir, get.quiet);
    let jobs = worker.jobs().map_err(|e| fail(Exit::Fatal, e))?;
    config.input_may_stall = true;
    config.input_ready = Some(jobs.ready());
    if get.output.is_none() && !get.quiet {
        let here = std::env::current_dir().map_or_else(|_| ".".into(), |d| d.display().to_string());
        let _ = writeln!(
            std::io::stderr(),
            "note: saving into the current directory, {here} (-o DIR to choose)"
        );
    }
    let runtime = crate::network_runtime(get.threads)?;
    let report = crate::open_report(get.report.as_deref())?;
    let quiet = get.quiet;
    let exit = runtime.block_on(crate::run(args.get, config, Box::new(jobs), report, Some(&worker)));
    let totals = worker.finish();
    // Now also the parts of workers that died during the run (their leases have run out).
    sweep(&worker, &output_dir, quiet);
    match totals {
        Ok(totals) => {
            if !quiet {
                let _ = writeln!(
                    std::io::stderr(),
                    "queue: {} results recorded, {} refused (lease lost), {} handed back",
                    totals.recorded,
                    totals.rejected,
                    totals.released
                );
            }
            exit
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e}");
            Ok(Exit::Fatal)
        }
    }
}

/// Removes the temporary files that workers no longer live left in the output directory (a
/// killed worker's `.part` files would otherwise stay); a failure only warns.
fn sweep(worker: &haul::queue::Worker, output_dir: &std::path::Path, quiet: bool) {
    match worker.remove_orphan_parts(output_dir) {
        Ok(0) => {}
        Ok(n) if !quiet => {
            let _ = writeln!(
                std::io::stderr(),
                "note: removed {n} temporary files left by workers that are gone"
            );
        }
        Ok(_) => {}
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "warning: {e}");
        }
    }
}

pub(crate) fn status(url: &str, job: &str, json: bool) -> Result<Exit> {
    let mut queue = haul::queue::Queue::connect(url, job)?;
    let status = queue.status()?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&status)?)?;
        return Ok(Exit::Success);
    }
    writeln!(out, "queue job: {}", status.name)?;
    if status.states.is_empty() {
        writeln!(out, "  no jobs")?;
    }
    for s in &status.states {
        writeln!(
            out,
            "{:>8}: {} jobs, {}",
            s.state,
            s.jobs,
            progress::human_bytes(s.bytes)
        )?;
    }
    if let Some(age) = status.oldest_queued_seconds {
        writeln!(out, "oldest queued job: waiting {age:.0} s")?;
    }
    if !status.workers.is_empty() {
        writeln!(out, "workers (last minute):")?;
        for w in &status.workers {
            // Two lines a worker: one line wrapped at 80 columns with a host name as label.
            writeln!(out, "  #{:<4} {:<7} {}", w.id, w.state, w.label)?;
            writeln!(
                out,
                "        {} files, {}, holding {}, heartbeat {:.0} s ago",
                w.done_last_minute,
                progress::human_bytes(w.bytes_last_minute),
                w.holding,
                w.silent_for
            )?;
        }
    }
    if !status.cooling.is_empty() {
        writeln!(out, "hosts cooling down (no worker asks them):")?;
        for c in &status.cooling {
            writeln!(out, "  {} for {:.0} s more ({})", c.host, c.seconds_left, c.reason)?;
        }
    }
    if !status.failures.is_empty() {
        writeln!(out, "failures by reason:")?;
        for f in &status.failures {
            writeln!(out, "  {:>6} × {}", f.jobs, f.reason)?;
        }
    }
    Ok(Exit::Success)
}

pub(crate) fn failed(url: &str, job: &str) -> Result<Exit> {
    let mut queue = haul::queue::Queue::connect(url, job)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = queue.for_each_failed(|line| writeln!(out, "{line}").map_err(|e| haul::Error::Queue(e.to_string())));
    match result {
        Err(haul::Error::Queue(msg)) if msg.contains("Broken pipe") => return Ok(Exit::Success),
        other => other?,
    }
    let _ = out.flush();
    Ok(Exit::Success)
}
