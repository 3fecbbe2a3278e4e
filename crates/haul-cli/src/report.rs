//! The CLI's reporter: the `--report` JSON lines, failure and bad-line messages (lines, or JSON
//! events with `--progress json`), and the final summary.

use std::io::{BufWriter, Write};
use std::sync::Mutex;

use crate::progress::{Display, human_bytes, human_duration, terminal_width, wrap};

/// Bad lines and failures printed as they happen, at most; the rest are counted (every one is
/// in the report, and every one is an event with `--progress json`).
const SHOWN_PROBLEMS: u64 = 20;

pub(crate) struct CliReporter {
    report: Option<Mutex<BufWriter<Box<dyn Write + Send>>>>,
    display: Display,
    quiet: bool,
    problems: Mutex<u64>,
    /// Host-level failures (connect, TLS) already printed, by host and error: printed once.
    host_failures: Mutex<std::collections::HashSet<(String, String)>>,
    write_error: Mutex<Option<std::io::Error>>,
}

impl CliReporter {
    pub(crate) fn new(report: Option<Box<dyn Write + Send>>, display: Display, quiet: bool) -> Self {
        Self {
            report: report.map(|w| Mutex::new(BufWriter::new(w))),
            display,
            quiet,
            problems: Mutex::new(0),
            host_failures: Mutex::new(std::collections::HashSet::new()),
            write_error: Mutex::new(None),
        }
    }

    /// A failure or a bad line for a human: the first [`SHOWN_PROBLEMS`] are printed.
    fn problem(&self, line: &str) {
        let mut shown = self.problems.lock().expect("problems");
        *shown += 1;
        if *shown <= SHOWN_PROBLEMS {
            self.display.println(line);
        } else if *shown == SHOWN_PROBLEMS + 1 {
            let more = if self.report.is_some() {
                "(more problems are counted in the summary; the report lists each)"
            } else {
                "(more problems are counted in the summary; --report FILE lists each)"
            };
            self.display.println(more);
        }
    }

    fn write_report(&self, line: &serde_json::Value) {
        if let Some(report) = &self.report
            && let Err(e) = writeln!(report.lock().expect("report"), "{line}")
        {
            self.write_error.lock().expect("write error").get_or_insert(e);
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
        let failed = r.status == haul::JobStatus::Failed;
        if !failed && self.report.is_none() {
            return; // the common case (a million skips): nothing to format
        }
        // An id that is the URL itself is shown redacted like the URL.
        let url = r.url.to_string();
        let id = if r.id == r.url.0.as_str() { url.as_str() } else { r.id };
        let at = if r.line > 0 {
            format!("line {}: ", r.line)
        } else {
            String::new()
        };
        // Failures are errors: printed even with --quiet.
        if failed {
            if self.display.is_json() {
                self.display.event(&serde_json::json!({
                    "type": "failed",
                    "id": id,
                    "url": url,
                    "path": r.path,
                    "line": r.line,
                    "reason": r.reason,
                    "error": r.error,
                    "http_status": r.http_status,
                    "attempts": r.attempts,
                }));
            } else if matches!(r.reason, Some("connect" | "network" | "timeout")) {
                // The host, not the job: said once (the summary counts them all).
                let key = (r.host.to_owned(), r.error.unwrap_or("?").to_owned());
                let mut seen = self.host_failures.lock().expect("host failures");
                if seen.len() < 1000 && seen.insert(key) {
                    drop(seen);
                    self.problem(&format!(
                        "failed: {at}{}: {} (further jobs on {} failing the same way are not listed; the summary counts them)",
                        r.url,
                        r.error.unwrap_or("?"),
                        r.host
                    ));
                }
            } else {
                self.problem(&format!("failed: {at}{}: {}", r.url, r.error.unwrap_or("?")));
            }
        }
        if self.report.is_some() {
            self.write_report(&serde_json::json!({
                "id": id,
                "url": url,
                "final_url": r.final_url.map(|u| u.to_string()),
                "path": r.path,
                "status": r.status.name(),
                "http_status": r.http_status,
                "bytes": r.bytes,
                "sha256": r.sha256.map(|h| haul::to_hex(h)),
                "blake3": r.blake3.map(|h| haul::to_hex(h)),
                "verified": r.verified,
                "duration_s": r.duration.map(|d| d.as_secs_f64()),
                "attempts": r.attempts,
                "reason": r.reason,
                "error": r.error,
                "line": r.line,
            }));
        }
    }

    fn on_bad_line(&self, error: &haul::ManifestError) {
        if self.display.is_json() {
            self.display.event(&serde_json::json!({
                "type": "bad_line",
                "line": error.line,
                "error": error.reason,
            }));
        } else {
            self.problem(&format!("bad manifest {error}"));
        }
        self.write_report(&serde_json::json!({
            "status": "bad_line",
            "line": error.line,
            "error": error.reason,
        }));
    }

    fn on_notice(&self, message: &str) {
        if !self.quiet {
            self.display.println(&format!("note: {message}"));
        }
    }

    fn on_host_paused(&self, host: &str, wait: std::time::Duration, reason: &str) {
        // Live in the display's host rows; an event in JSON mode.
        self.display.event(&serde_json::json!({
            "type": "host_paused",
            "host": host,
            "wait_s": wait.as_secs_f64(),
            "reason": reason,
        }));
    }
}

/// The summary as one JSON object (`--progress json`).
#[expect(clippy::cast_precision_loss, reason = "display only")]
pub(crate) fn summary_json(s: &haul::Summary, exit: i32) -> serde_json::Value {
    let secs = s.elapsed.as_secs_f64().max(0.001);
    serde_json::json!({
        "type": "summary",
        "done": s.done,
        "skipped": s.skipped_total(),
        "failed": s.failed_total(),
        "bad_lines": s.bad_lines,
        "pending": s.pending,
        "unverified": s.unverified,
        "refetched_stale": s.stale,
        "bytes": s.bytes,
        "elapsed_s": s.elapsed.as_secs_f64(),
        "files_per_s": s.done as f64 / secs,
        "bytes_per_s": s.bytes as f64 / secs,
        "retries": s.retries,
        "skipped_by_reason": s.skipped,
        "failed_by_reason": s.failed.iter().map(|((reason, host), count)| serde_json::json!({
            "reason": reason, "host": host, "count": count,
        })).collect::<Vec<_>>(),
        "hosts": s.hosts.iter().map(|h| serde_json::json!({
            "host": h.host,
            "limit": h.limit,
            "ttfb_ms": h.ttfb.map(|t| t.as_secs_f64() * 1000.0),
            "refusals": h.refusals,
            "errors": h.errors,
            "pauses": h.pauses,
        })).collect::<Vec<_>>(),
        "interrupted": s.interrupted,
        "fatal": s.fatal,
        "exit_code": exit,
    })
}

/// The summary for a human; on a terminal every line fits its width (longer ones wrap at a
/// space, indented), so nothing is cut.
pub(crate) fn print_summary(s: &haul::Summary) {
    let width = terminal_width();
    let mut err = std::io::stderr().lock();
    for line in summary_lines(s) {
        match width {
            Some(width) => {
                for piece in wrap(&line, width) {
                    let _ = writeln!(err, "{piece}");
                }
            }
            None => {
                let _ = writeln!(err, "{line}");
            }
        }
    }
}

#[expect(clippy::cast_precision_loss, reason = "display only")]
fn summary_lines(s: &haul::Summary) -> Vec<String> {
    let secs = s.elapsed.as_secs_f64().max(0.001);
    let mut lines = vec![
        format!(
            "{} done, {} skipped, {} failed, {} bad lines{}",
            s.done,
            s.skipped_total(),
            s.failed_total(),
            s.bad_lines,
            if s.pending > 0 {
                format!(", {} pending", s.pending)
            } else {
                String::new()
            },
        ),
        format!(
            "{} in {} · {} files/s · {}/s · {} retries",
            human_bytes(s.bytes),
            human_duration(s.elapsed),
            crate::progress::files_per_s(s.done as f64 / secs),
            human_bytes((s.bytes as f64 / secs) as u64),
            s.retries,
        ),
    ];
    for (reason, count) in &s.skipped {
        lines.push(format!("  skipped {count} × {reason}"));
    }
    for ((reason, host), count) in &s.failed {
        lines.push(format!("  failed {count} × {reason} on {host}"));
    }
    for host in &s.hosts {
        let ttfb = host
            .ttfb
            .map_or_else(String::new, |t| format!(", ttfb {:.0} ms", t.as_secs_f64() * 1000.0));
        lines.push(format!(
            "  host {}: limit settled at {}{ttfb}; {} refused (429), {} load errors, paused {} time(s)",
            host.host, host.limit, host.refusals, host.errors, host.pauses
        ));
    }
    if s.stale > 0 {
        lines.push(format!(
            "  {} archived file(s) were missing or corrupt on disk: fetched again",
            s.stale
        ));
    }
    if s.unverified > 0 {
        lines.push(format!(
            "  {} file(s) had no length to check (no Content-Length, no manifest size or sha256): recorded done but unverified",
            s.unverified
        ));
    }
    if s.interrupted {
        lines.push(
            "interrupted: run the same command again to finish (done files are skipped, partial files resume)"
                .to_owned(),
        );
    }
    if let Some(fatal) = &s.fatal {
        lines.push(format!("error: {fatal}"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_lines_fit_80_columns() {
        let mut s = haul::Summary {
            done: 1_234_567,
            bad_lines: 3,
            interrupted: true,
            ..haul::Summary::default()
        };
        s.failed.insert(("http 404".into(), "cdn.example.com:443".into()), 12);
        for line in summary_lines(&s) {
            for piece in wrap(&line, 80) {
                assert!(piece.chars().count() <= 80, "{piece:?}");
            }
        }
        let text: Vec<String> = summary_lines(&s).iter().flat_map(|l| wrap(l, 80)).collect();
        let words: Vec<&str> = text.iter().flat_map(|l| l.split_whitespace()).collect();
        assert!(words.join(" ").contains("run the same command again to finish"));
    }
}
