//! Progress display: samples the engine's [`haul::Monitor`] on a timer and draws it.
//!
//! The engine never waits for the display: it is redrawn at most 5 times a second from a
//! snapshot of atomic counters, however many files finish in between. One [`Display`] per run;
//! [`Display::finish`] ends it (bars cleared) before the summary is printed, so nothing redraws
//! over the summary.
//!
//! Every mode shows the same numbers: done/total, failures, the current rates (over the last
//! [`RATE_WINDOW`], not since the start), an ETA from the files and bytes still to come, the
//! transfers running longest with their speed and ETA, and a line per busy or paused host.
//! `--progress json` writes nothing but JSON lines (status, events, the summary).

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::ProgressArg;

/// Transfers shown under the overall line.
const SHOWN_TRANSFERS: usize = 3;
/// Hosts shown under the transfers.
const SHOWN_HOSTS: usize = 4;
/// A transfer is shown once it has run this long (shorter ones come and go too fast to read).
const SHOW_AFTER: Duration = Duration::from_millis(500);
/// The window of the current rates.
pub(crate) const RATE_WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bars,
    Plain,
    Json,
    None,
}

/// The run's display; cheap to clone (the reporter and the signal handler hold one each).
#[derive(Clone)]
pub(crate) struct Display {
    inner: Arc<Inner>,
}

struct Inner {
    mode: Mode,
    multi: Option<MultiProgress>,
    stop: tokio::sync::watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    finished: AtomicBool,
}

impl Display {
    pub(crate) fn start(mode: ProgressArg, monitor: Arc<haul::Monitor>) -> Self {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mode = match mode {
            ProgressArg::Auto if std::io::IsTerminal::is_terminal(&std::io::stderr()) => Mode::Bars,
            ProgressArg::Auto | ProgressArg::Plain => Mode::Plain,
            ProgressArg::Bars => Mode::Bars,
            ProgressArg::Json => Mode::Json,
            ProgressArg::None => Mode::None,
        };
        let (task, multi) = match mode {
            Mode::Bars => {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5));
                let task = tokio::spawn(bars(multi.clone(), monitor, stop_rx));
                (Some(task), Some(multi))
            }
            Mode::Plain => (Some(tokio::spawn(lines(monitor, stop_rx, false))), None),
            Mode::Json => (Some(tokio::spawn(lines(monitor, stop_rx, true))), None),
            Mode::None => (None, None),
        };
        Self {
            inner: Arc::new(Inner {
                mode,
                multi,
                stop,
                task: Mutex::new(task),
                finished: AtomicBool::new(false),
            }),
        }
    }

    /// True when only JSON lines may be written (`--progress json`).
    pub(crate) fn is_json(&self) -> bool {
        self.inner.mode == Mode::Json
    }

    /// Prints a line for the user above the bars (or plainly); a `notice` event in JSON mode.
    pub(crate) fn println(&self, line: &str) {
        if self.is_json() {
            self.event(&serde_json::json!({ "type": "notice", "message": line }));
            return;
        }
        match &self.inner.multi {
            Some(multi) if !self.inner.finished.load(Ordering::Acquire) => {
                // Wrapped here: a line the terminal wraps itself would throw off the bars'
                // count of rows, and a redraw would land in the middle of it.
                let width = terminal_width().unwrap_or(80);
                let _ = multi.println(wrap(line, width).join("\n"));
            }
            _ => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
    }

    /// Writes one JSON event line (JSON mode only).
    pub(crate) fn event(&self, event: &serde_json::Value) {
        if self.is_json() {
            let _ = writeln!(std::io::stderr().lock(), "{event}");
        }
    }

    /// Stops the display and clears the bars; lines printed afterwards go straight to stderr.
    pub(crate) async fn finish(&self) {
        self.inner.stop.send_replace(true);
        let task = self.inner.task.lock().expect("display task").take();
        if let Some(task) = task {
            let _ = task.await;
        }
        if let Some(multi) = &self.inner.multi {
            let _ = multi.clear();
        }
        self.inner.finished.store(true, Ordering::Release);
    }
}

/// Counters sampled over the last [`RATE_WINDOW`], for current rates.
#[derive(Default)]
struct Rates {
    samples: VecDeque<(Instant, u64, u64, u64)>,
}

impl Rates {
    /// Adds a sample (finished jobs, done jobs, bytes) and returns the rates over the window:
    /// (finished/s, done/s, bytes/s).
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    fn sample(&mut self, now: Instant, stats: &haul::Stats) -> (f64, f64, f64) {
        let finished = stats.done + stats.skipped + stats.failed;
        self.samples.push_back((now, finished, stats.done, stats.bytes));
        // Keep one sample at or before the window's start as the baseline.
        while self
            .samples
            .get(1)
            .is_some_and(|(at, ..)| now.saturating_duration_since(*at) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
        let (at, f0, d0, b0) = *self.samples.front().expect("just pushed");
        // Until the window has a second of history, the rates since the start.
        let (span, f0, d0, b0) = if now.saturating_duration_since(at) >= Duration::from_secs(1) {
            (now.saturating_duration_since(at), f0, d0, b0)
        } else {
            (stats.elapsed, 0, 0, 0)
        };
        let secs = span.as_secs_f64().max(0.001);
        (
            finished.saturating_sub(f0) as f64 / secs,
            stats.done.saturating_sub(d0) as f64 / secs,
            stats.bytes.saturating_sub(b0) as f64 / secs,
        )
    }
}

/// What every mode shows, computed once per tick.
struct Status {
    stats: haul::Stats,
    finished: u64,
    files_per_s: f64,
    bytes_per_s: f64,
    eta: Option<Duration>,
    transfers: Vec<haul::Transfer>,
    hosts: Vec<haul::HostView>,
}

impl Status {
    #[expect(clippy::cast_precision_loss, reason = "display only")]
    fn now(monitor: &haul::Monitor, rates: &mut Rates) -> Self {
        let stats = monitor.stats();
        let (finished_per_s, files_per_s, bytes_per_s) = rates.sample(Instant::now(), &stats);
        let finished = stats.done + stats.skipped + stats.failed;
        let transfers = monitor.transfers();
        // Files still to finish at the current pace, but never less than the bytes the running
        // transfers still need at the current byte rate, nor than the slowest transfer's own ETA
        // (a throttled video outlasts the overall rate's estimate).
        let eta = stats.total.and_then(|total| {
            let files_left = total.saturating_sub(finished);
            if files_left == 0 {
                return Some(Duration::ZERO);
            }
            let by_files = (finished_per_s > 0.0).then(|| files_left as f64 / finished_per_s)?;
            let bytes_left: u64 = transfers
                .iter()
                .filter_map(|t| t.total.map(|size| size.saturating_sub(t.received)))
                .sum();
            let by_bytes = if bytes_per_s > 0.0 {
                bytes_left as f64 / bytes_per_s
            } else {
                0.0
            };
            let slowest = transfers.iter().filter_map(transfer_eta).max().unwrap_or_default();
            Some(Duration::from_secs_f64(by_files.max(by_bytes).min(1e9)).max(slowest))
        });
        Self {
            stats,
            finished,
            files_per_s,
            bytes_per_s,
            eta,
            transfers,
            hosts: monitor.hosts(),
        }
    }

    /// `96/5,000 files · 2 failed · 93 files/s · 3.1 MiB/s · ETA 52s · 8 active`: the most
    /// important first, so a narrow terminal cuts the least important.
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "display only")]
    fn overall(&self) -> String {
        let s = &self.stats;
        let count = match (s.total, s.total_exact) {
            (Some(total), true) => format!("{}/{total} files", self.finished),
            (Some(total), false) => format!("{}/~{total} files", self.finished),
            (None, _) => format!("{} files so far", self.finished),
        };
        let eta = self
            .eta
            .map_or_else(|| "ETA –".to_owned(), |eta| format!("ETA {}", human_duration(eta)));
        let mut line = format!(
            "{count} · {} failed · {} files/s · {}/s · {eta} · {} active",
            s.failed,
            files_per_s(self.files_per_s),
            human_bytes(self.bytes_per_s as u64),
            s.active
        );
        if s.retries > 0 {
            line.push_str(&format!(" · {} retries", s.retries));
        }
        line
    }

    /// The transfers worth a row: running for a moment at least, longest first.
    fn shown_transfers(&self) -> impl Iterator<Item = &haul::Transfer> {
        self.transfers
            .iter()
            .filter(|t| t.elapsed >= SHOW_AFTER)
            .take(SHOWN_TRANSFERS)
    }

    /// Host rows: when several hosts are busy, or one is paused.
    fn shown_hosts(&self) -> Vec<&haul::HostView> {
        let busy: Vec<&haul::HostView> = self
            .hosts
            .iter()
            .filter(|h| h.in_flight > 0 || h.waiting > 0 || h.paused_for.is_some())
            .collect();
        if busy.len() > 1 || busy.iter().any(|h| h.paused_for.is_some()) {
            busy.into_iter().take(SHOWN_HOSTS).collect()
        } else {
            Vec::new()
        }
    }

    #[expect(clippy::cast_precision_loss, reason = "display only")]
    fn json(&self) -> serde_json::Value {
        let s = &self.stats;
        serde_json::json!({
            "type": "progress",
            "elapsed_s": s.elapsed.as_secs_f64(),
            "read": s.read,
            "total": s.total,
            "total_exact": s.total_exact,
            "done": s.done,
            "skipped": s.skipped,
            "failed": s.failed,
            "bad_lines": s.bad_lines,
            "retries": s.retries,
            "bytes": s.bytes,
            "active": s.active,
            "files_per_s": self.files_per_s,
            "bytes_per_s": self.bytes_per_s,
            "eta_s": self.eta.map(|e| e.as_secs_f64()),
            "transfers": self.shown_transfers().map(|t| serde_json::json!({
                "path": t.path,
                "received": t.received,
                "total": t.total,
                "bytes_per_s": t.speed(),
                "eta_s": transfer_eta(t).map(|e| e.as_secs_f64()),
            })).collect::<Vec<_>>(),
            "hosts": self.hosts.iter().map(|h| serde_json::json!({
                "host": h.host,
                "limit": h.limit,
                "in_flight": h.in_flight,
                "waiting": h.waiting,
                "ttfb_ms": h.ttfb.map(|t| t.as_secs_f64() * 1000.0),
                "paused_s": h.paused_for.map(|p| p.as_secs_f64()),
                "pause_reason": h.pause_reason,
                "phase": h.phase,
            })).collect::<Vec<_>>(),
            "files_per_s_since_start": s.done as f64 / s.elapsed.as_secs_f64().max(0.001),
        })
    }
}

#[expect(clippy::cast_precision_loss, reason = "display only")]
fn transfer_eta(t: &haul::Transfer) -> Option<Duration> {
    let left = t.total?.saturating_sub(t.received);
    let speed = t.speed();
    (speed > 0.0).then(|| Duration::from_secs_f64((left as f64 / speed).min(1e9)))
}

/// `  video.mp4 · 45.2 MiB/100.0 MiB · 3.0 MiB/s · ETA 18s`, or once every byte arrived
/// `  video.mp4 · 100.0 MiB · finishing` (verified, then renamed or, for a bucket, its upload
/// completed).
#[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "display only")]
fn transfer_line(t: &haul::Transfer) -> String {
    let name = t.path.rsplit('/').next().unwrap_or(&t.path);
    let name = if name.chars().count() > 32 {
        format!("{}…", name.chars().take(31).collect::<String>())
    } else {
        name.to_owned()
    };
    if t.total.is_some_and(|total| t.received >= total) {
        return format!("  {name} · {} · finishing", human_bytes(t.received));
    }
    let size = t.total.map_or_else(
        || human_bytes(t.received),
        |total| format!("{}/{}", human_bytes(t.received), human_bytes(total)),
    );
    let eta = transfer_eta(t).map_or_else(String::new, |e| format!(" · ETA {}", human_duration(e)));
    format!("  {name} · {size} · {}/s{eta}", human_bytes(t.speed() as u64))
}

async fn bars(multi: MultiProgress, monitor: Arc<haul::Monitor>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let main = multi.add(ProgressBar::new(0));
    main.set_style(
        ProgressStyle::with_template("[{bar:10}] {wide_msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    let row_style = ProgressStyle::with_template("{wide_msg}").expect("template");
    let rows: Vec<ProgressBar> = (0..SHOWN_TRANSFERS + SHOWN_HOSTS)
        .map(|_| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(row_style.clone());
            bar
        })
        .collect();
    let mut rates = Rates::default();
    loop {
        let status = Status::now(&monitor, &mut rates);
        main.set_length(status.stats.total.unwrap_or(status.stats.read).max(status.finished));
        main.set_position(status.finished);
        // The bar and its brackets take 13 columns.
        let room = terminal_width().unwrap_or(80).saturating_sub(13);
        main.set_message(fit(&status.overall(), room));
        let mut texts: Vec<String> = status.shown_transfers().map(transfer_line).collect();
        texts.extend(status.shown_hosts().into_iter().map(|h| format!("  {}", host_line(h))));
        for (i, row) in rows.iter().enumerate() {
            row.set_message(texts.get(i).cloned().unwrap_or_default());
        }
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => {}
        }
    }
    for row in rows {
        row.finish_and_clear();
    }
    main.finish_and_clear();
}

async fn lines(monitor: Arc<haul::Monitor>, mut stop: tokio::sync::watch::Receiver<bool>, json: bool) {
    let every = if json {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let mut rates = Rates::default();
    let mut sample = tokio::time::interval(Duration::from_millis(500));
    let mut next = Instant::now() + every;
    loop {
        tokio::select! {
            _ = sample.tick() => {}
            _ = stop.changed() => return,
        }
        // Sampled twice a second for the rates; printed every `every`.
        let status = Status::now(&monitor, &mut rates);
        if Instant::now() < next {
            continue;
        }
        next += every;
        let text = if json {
            status.json().to_string()
        } else {
            let mut text = status.overall();
            for t in status.shown_transfers() {
                text.push('\n');
                text.push_str(&transfer_line(t));
            }
            for host in status.shown_hosts() {
                text.push_str("\n  ");
                text.push_str(&host_line(host));
            }
            text
        };
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    }
}

/// One busy host: `cdn:443 · limit 6 · 6 in flight · 12 waiting · ttfb 52 ms · steady`, or
/// `cdn:443 · paused 12.3 s more: 429 Too Many Requests, waiting 30.0 s · 40 waiting`.
pub(crate) fn host_line(h: &haul::HostView) -> String {
    if let Some(paused) = h.paused_for {
        let reason = h.pause_reason.as_deref().unwrap_or("asked to wait");
        return format!(
            "{} · paused {:.1} s more: {reason} · {} waiting",
            h.host,
            paused.as_secs_f64(),
            h.waiting
        );
    }
    let ttfb = h
        .ttfb
        .map_or_else(String::new, |t| format!(" · ttfb {:.0} ms", t.as_secs_f64() * 1000.0));
    format!(
        "{} · limit {} · {} in flight · {} waiting{ttfb} · {}",
        h.host, h.limit, h.in_flight, h.waiting, h.phase
    )
}

/// The width of the terminal on stderr, if stderr is a terminal.
pub(crate) fn terminal_width() -> Option<usize> {
    let term = console::Term::stderr();
    if !term.is_term() {
        return None;
    }
    term.size_checked().map(|(_, cols)| usize::from(cols).max(20))
}

/// `line` (segments joined by ` · `, the most important first) without the trailing segments
/// that do not fit in `width` columns: a narrow terminal loses whole items, not half a word. A
/// first segment longer than the width is left for the terminal to cut.
fn fit(line: &str, width: usize) -> String {
    let mut end = line.len();
    while line[..end].chars().count() > width {
        match line[..end].rfind(" · ") {
            Some(at) => end = at,
            None => break,
        }
    }
    line[..end].to_owned()
}

/// Splits `line` into pieces of at most `width` columns, at spaces where it can (a longer word,
/// like a URL, is cut); the line's own indentation is kept, and continuation pieces are indented
/// four spaces more.
pub(crate) fn wrap(line: &str, width: usize) -> Vec<String> {
    let body = line.trim_start_matches(' ');
    let lead = &line[..line.len() - body.len()];
    let indent = format!("{lead}    ");
    let mut pieces = Vec::new();
    let mut current = lead.to_owned();
    let mut used = lead.len();
    for word in body.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let gap = usize::from(used > 0 && !current.trim().is_empty());
            if used + gap + word.len() <= width {
                if gap == 1 {
                    current.push(' ');
                }
                current.extend(word.iter());
                used += gap + word.len();
                break;
            }
            if current.trim().is_empty() {
                // A word longer than a whole line: cut it.
                let room = width.saturating_sub(used).max(1);
                let rest = word.split_off(room.min(word.len()));
                current.extend(word.iter());
                word = rest;
            }
            pieces.push(std::mem::take(&mut current));
            current.push_str(&indent);
            used = indent.len();
            if word.is_empty() {
                break;
            }
        }
    }
    if !current.trim().is_empty() {
        pieces.push(current);
    }
    pieces
}

/// Files per second as shown: one decimal below 10 (so 0.4 files/s is not "0").
pub(crate) fn files_per_s(rate: f64) -> String {
    if rate < 10.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.0}")
    }
}

/// `1.5 MiB`-style sizes.
#[expect(clippy::cast_precision_loss, reason = "display only")]
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `1h02m`, `3m05s`, `12s`, `1.5s`.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s >= 10 {
        format!("{s}s")
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(done: u64, bytes: u64, elapsed: Duration) -> haul::Stats {
        haul::Stats {
            read: done,
            total: Some(1000),
            total_exact: true,
            done,
            skipped: 0,
            failed: 0,
            bad_lines: 0,
            retries: 0,
            bytes,
            active: 0,
            elapsed,
        }
    }

    #[test]
    fn rates_are_current_not_averages_since_the_start() {
        let mut rates = Rates::default();
        let start = Instant::now();
        // 1,700 files in the first 10 s, then 2 files in the next 6 s.
        rates.sample(start, &stats(1700, 0, Duration::from_secs(10)));
        let (_, files, _) = rates.sample(start + Duration::from_secs(6), &stats(1702, 0, Duration::from_secs(16)));
        assert!(files < 1.0, "files/s {files} over the last seconds");
    }

    #[test]
    fn a_transfer_that_received_everything_is_finishing() {
        let mut t = haul::Transfer {
            path: "videos/a.mp4".into(),
            received: 50 << 20,
            total: Some(100 << 20),
            elapsed: Duration::from_secs(5),
            fresh: 50 << 20,
        };
        assert_eq!(
            transfer_line(&t),
            "  a.mp4 · 50.0 MiB/100.0 MiB · 10.0 MiB/s · ETA 5.0s"
        );
        t.received = 100 << 20;
        assert_eq!(transfer_line(&t), "  a.mp4 · 100.0 MiB · finishing");
    }

    #[test]
    fn a_status_line_too_wide_loses_whole_items_from_its_end() {
        let line = "3/6 files · 1 failed · 0.8 files/s · 141.8 MiB/s · ETA 2.4s · 0 active";
        assert_eq!(fit(line, 80), line);
        assert_eq!(
            fit(line, 67),
            "3/6 files · 1 failed · 0.8 files/s · 141.8 MiB/s · ETA 2.4s"
        );
        assert_eq!(fit(line, 20), "3/6 files · 1 failed");
        assert_eq!(fit(line, 5), "3/6 files", "the first item stays whole");
    }

    #[test]
    fn wrapping_keeps_every_piece_within_the_width() {
        let url = format!("http://127.0.0.1:45053/f/{}?size=10&status=404", "x".repeat(120));
        let line = format!("failed: line 2: {url}: HTTP 404");
        let pieces = wrap(&line, 80);
        assert!(pieces.len() >= 2, "{pieces:?}");
        assert!(pieces.iter().all(|p| p.chars().count() <= 80), "{pieces:?}");
        let joined: String = pieces.iter().map(|p| p.trim_start()).collect::<Vec<_>>().join("");
        assert!(joined.contains(&url[..60]), "{joined}");
        assert_eq!(wrap("short", 80), vec!["short".to_owned()]);
        assert_eq!(
            wrap("  failed 1 × http 404", 80),
            vec!["  failed 1 × http 404".to_owned()]
        );
        let indented = wrap(&format!("  host {}", "word ".repeat(30)), 40);
        assert!(
            indented[0].starts_with("  host") && indented[1].starts_with("      word"),
            "{indented:?}"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human_duration(Duration::from_secs(52)), "52s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3m05s");
    }
}
