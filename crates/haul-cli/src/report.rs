//! The CLI's reporter: the `--report` JSON lines, bad-line messages, and the final summary.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::sync::{Arc, Mutex};

use crate::progress::{Display, human_bytes, human_duration};

/// Bad lines and failures printed as they happen, at most; the rest are counted.
const SHOWN_PROBLEMS: u64 = 20;

pub(crate) struct CliReporter {
    report: Option<Mutex<BufWriter<File>>>,
    display: Arc<Display>,
    quiet: bool,
    problems: Mutex<u64>,
    write_error: Mutex<Option<std::io::Error>>,
}

impl CliReporter {
    pub(crate) fn new(report: Option<File>, display: Arc<Display>, quiet: bool) -> Self {
        Self {
            report: report.map(|f| Mutex::new(BufWriter::new(f))),
            display,
            quiet,
            problems: Mutex::new(0),
            write_error: Mutex::new(None),
        }
    }

    fn problem(&self, line: &str) {
        let mut shown = self.problems.lock().expect("problems");
        *shown += 1;
        if *shown <= SHOWN_PROBLEMS {
            self.display.println(line);
        } else if *shown == SHOWN_PROBLEMS + 1 {
            self.display
                .println("(more problems are counted in the summary; see --report for each)");
        }
    }

    pub(crate) fn finish(&self) -> std::io::Result<()> {
        if let Some(e) = self.write_error.lock().expect("write error").take() {
            return Err(e);
        }
        if let Some(report) = &self.report {
            report.lock().expect("report").flush()?;
        }
        Ok(())
    }
}

impl haul::Reporter for CliReporter {
    fn on_job_finished(&self, r: &haul::JobReport<'_>) {
        // Failures are errors: printed even with --quiet.
        if r.status == haul::JobStatus::Failed {
            let at = if r.line > 0 {
                format!("line {}: ", r.line)
            } else {
                String::new()
            };
            self.problem(&format!("failed: {at}{}: {}", r.url, r.error.unwrap_or("?")));
        }
        if let Some(report) = &self.report {
            // An id that is the URL itself is shown redacted like the URL.
            let url = r.url.to_string();
            let id = if r.id == r.url.0.as_str() { url.as_str() } else { r.id };
            let line = serde_json::json!({
                "id": id,
                "url": url,
                "path": r.path,
                "status": r.status.name(),
                "http_status": r.http_status,
                "bytes": r.bytes,
                "attempts": r.attempts,
                "reason": r.reason,
                "error": r.error,
                "line": r.line,
                "verified": r.verified,
            });
            if let Err(e) = writeln!(report.lock().expect("report"), "{line}") {
                self.write_error.lock().expect("write error").get_or_insert(e);
            }
        }
    }

    fn on_bad_line(&self, error: &haul::ManifestError) {
        self.problem(&format!("bad manifest {error}"));
        if let Some(report) = &self.report {
            let line = serde_json::json!({
                "status": "bad_line",
                "line": error.line,
                "error": error.reason,
            });
            if let Err(e) = writeln!(report.lock().expect("report"), "{line}") {
                self.write_error.lock().expect("write error").get_or_insert(e);
            }
        }
    }

    fn on_notice(&self, message: &str) {
        if !self.quiet {
            self.display.println(&format!("note: {message}"));
        }
    }
}

#[expect(clippy::cast_precision_loss, reason = "display only")]
pub(crate) fn print_summary(s: &haul::Summary) {
    let mut err = std::io::stderr().lock();
    let secs = s.elapsed.as_secs_f64().max(0.001);
    let _ = writeln!(
        err,
        "{} done, {} skipped, {} failed, {} bad lines{} · {} in {} · {:.0} files/s · {}/s · {} retries",
        s.done,
        s.skipped_total(),
        s.failed_total(),
        s.bad_lines,
        if s.pending > 0 {
            format!(", {} pending", s.pending)
        } else {
            String::new()
        },
        human_bytes(s.bytes),
        human_duration(s.elapsed),
        s.done as f64 / secs,
        human_bytes((s.bytes as f64 / secs) as u64),
        s.retries,
    );
    for (reason, count) in &s.skipped {
        let _ = writeln!(err, "  skipped {count} × {reason}");
    }
    for ((reason, host), count) in &s.failed {
        let _ = writeln!(err, "  failed {count} × {reason} on {host}");
    }
    for host in &s.hosts {
        let ttfb = host
            .ttfb
            .map_or_else(String::new, |t| format!(", ttfb {:.0} ms", t.as_secs_f64() * 1000.0));
        let _ = writeln!(
            err,
            "  host {}: limit settled at {}{ttfb}; {} refused (429), {} load errors, paused {} time(s)",
            host.host, host.limit, host.refusals, host.errors, host.pauses
        );
    }
    if s.unverified > 0 {
        let _ = writeln!(
            err,
            "  {} file(s) had no length to check (no Content-Length, no manifest size or sha256): recorded done but unverified",
            s.unverified
        );
    }
    if s.interrupted {
        let _ = writeln!(
            err,
            "interrupted: run the same command again to finish (done files are skipped, partial files resume)"
        );
    }
    if let Some(fatal) = &s.fatal {
        let _ = writeln!(err, "error: {fatal}");
    }
}
