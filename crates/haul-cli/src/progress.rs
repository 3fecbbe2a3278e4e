//! Progress display: samples the engine's [`haul::Monitor`] on a timer and draws it.
//!
//! The engine never waits for the display: bars are redrawn at most 5 times a second from a
//! snapshot of atomic counters, however many files finish in between.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::args::ProgressArg;

/// Transfers shown under the overall line.
const SHOWN_TRANSFERS: usize = 3;

/// A running display; [`Display::finish`] stops it.
pub(crate) struct Display {
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    multi: Option<MultiProgress>,
}

impl Display {
    pub(crate) fn start(mode: ProgressArg, monitor: Arc<haul::Monitor>) -> Self {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mode = match mode {
            ProgressArg::Auto if std::io::IsTerminal::is_terminal(&std::io::stderr()) => ProgressArg::Bars,
            ProgressArg::Auto => ProgressArg::Plain,
            other => other,
        };
        let (task, multi) = match mode {
            ProgressArg::Bars => {
                let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(5));
                let task = tokio::spawn(bars(multi.clone(), monitor, stop_rx));
                (Some(task), Some(multi))
            }
            ProgressArg::Plain => (Some(tokio::spawn(lines(monitor, stop_rx, false))), None),
            ProgressArg::Json => (Some(tokio::spawn(lines(monitor, stop_rx, true))), None),
            ProgressArg::None | ProgressArg::Auto => (None, None),
        };
        Self { stop, task, multi }
    }

    /// Prints a line above the bars (or plainly when there are none).
    pub(crate) fn println(&self, line: &str) {
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(line);
            }
            None => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
    }

    pub(crate) async fn finish(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if let Some(multi) = &self.multi {
            let _ = multi.clear();
        }
    }
}

fn rate(count: f64, elapsed: Duration) -> f64 {
    count / elapsed.as_secs_f64().max(0.001)
}

#[expect(clippy::cast_precision_loss, reason = "display only")]
fn overall(stats: &haul::Stats, in_flight: &[haul::Transfer]) -> String {
    let finished = stats.done + stats.skipped + stats.failed;
    // Until the whole manifest has been read, the total is only a lower bound.
    let total = stats
        .total
        .map_or_else(|| format!("{}+", stats.read), |t| t.to_string());
    let byte_rate = rate(stats.bytes as f64, stats.elapsed);
    let eta = match stats.total {
        Some(total) if finished > 0 && (total > finished || !in_flight.is_empty()) => {
            // Files still to finish at the pace so far, but never less than the bytes the
            // largest transfers still need at the current byte rate.
            let per_file = stats.elapsed.as_secs_f64() / finished as f64;
            let by_files = per_file * total.saturating_sub(finished) as f64;
            let remaining: u64 = in_flight
                .iter()
                .filter_map(|t| t.total.map(|size| size.saturating_sub(t.received)))
                .sum();
            let by_bytes = if byte_rate > 0.0 {
                remaining as f64 / byte_rate
            } else {
                0.0
            };
            format!(
                " · ETA {}",
                human_duration(Duration::from_secs_f64(by_files.max(by_bytes)))
            )
        }
        _ => String::new(),
    };
    format!(
        "{finished}/{total} files · {} · {:.0} files/s · {}/s · {} failed · {} retries{eta}",
        human_bytes(stats.bytes),
        rate(stats.done as f64, stats.elapsed),
        human_bytes(byte_rate as u64),
        stats.failed,
        stats.retries,
    )
}

async fn bars(multi: MultiProgress, monitor: Arc<haul::Monitor>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let main = multi.add(ProgressBar::new(0));
    main.set_style(
        ProgressStyle::with_template("{spinner} [{bar:24}] {wide_msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    let transfer_style = ProgressStyle::with_template("  [{bar:20}] {bytes:>10}/{total_bytes:<10} {wide_msg}")
        .expect("template")
        .progress_chars("=> ");
    let hidden = ProgressStyle::with_template("").expect("template");
    let rows: Vec<ProgressBar> = (0..SHOWN_TRANSFERS)
        .map(|_| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(hidden.clone());
            bar
        })
        .collect();
    loop {
        let stats = monitor.stats();
        let largest = monitor.largest_transfers(SHOWN_TRANSFERS);
        let finished = stats.done + stats.skipped + stats.failed;
        main.set_length(stats.total.unwrap_or(stats.read).max(finished));
        main.set_position(finished);
        let hosts = monitor.hosts();
        let mut message = overall(&stats, &largest);
        if let Some(busy) = hosts.iter().find(|h| h.paused_for.is_some()).or_else(|| hosts.first()) {
            message.push_str(" · ");
            message.push_str(&host_line(busy));
        }
        main.set_message(message);
        main.tick();
        for (i, bar) in rows.iter().enumerate() {
            match largest.get(i) {
                Some(t) => {
                    bar.set_style(transfer_style.clone());
                    bar.set_length(t.total.unwrap_or(t.received));
                    bar.set_position(t.received);
                    bar.set_message(t.path.clone());
                }
                None => bar.set_style(hidden.clone()),
            }
        }
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => {}
        }
    }
    for bar in rows {
        bar.finish_and_clear();
    }
    main.finish_and_clear();
}

async fn lines(monitor: Arc<haul::Monitor>, mut stop: tokio::sync::watch::Receiver<bool>, json: bool) {
    let every = if json {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let stats = monitor.stats();
        let line = if json {
            serde_json::json!({
                "type": "progress",
                "elapsed_s": stats.elapsed.as_secs_f64(),
                "read": stats.read,
                "total": stats.total,
                "done": stats.done,
                "skipped": stats.skipped,
                "failed": stats.failed,
                "bad_lines": stats.bad_lines,
                "retries": stats.retries,
                "bytes": stats.bytes,
                "active": stats.active,
                "hosts": monitor.hosts().iter().map(|h| serde_json::json!({
                    "host": h.host,
                    "limit": h.limit,
                    "in_flight": h.in_flight,
                    "waiting": h.waiting,
                    "ttfb_ms": h.ttfb.map(|t| t.as_secs_f64() * 1000.0),
                    "paused_s": h.paused_for.map(|p| p.as_secs_f64()),
                    "phase": h.phase,
                })).collect::<Vec<_>>(),
            })
            .to_string()
        } else {
            let mut text = overall(&stats, &[]);
            let hosts = monitor.hosts();
            if hosts.len() > 1 || hosts.iter().any(|h| h.paused_for.is_some()) {
                for host in &hosts {
                    text.push_str("\n  ");
                    text.push_str(&host_line(host));
                }
            }
            text
        };
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

/// One busy host: `cdn:443 · limit 6 · 6 in flight · 12 waiting · ttfb 52 ms · steady`, with the
/// pause when it is paused.
pub(crate) fn host_line(h: &haul::HostView) -> String {
    let ttfb = h
        .ttfb
        .map_or_else(String::new, |t| format!(" · ttfb {:.0} ms", t.as_secs_f64() * 1000.0));
    let paused = h
        .paused_for
        .map_or_else(String::new, |p| format!(" · paused {:.1} s more", p.as_secs_f64()));
    format!(
        "{} · limit {} · {} in flight · {} waiting{ttfb} · {}{paused}",
        h.host, h.limit, h.in_flight, h.waiting, h.phase
    )
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

/// `1h02m`, `3m05s`, `12s`.
pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
