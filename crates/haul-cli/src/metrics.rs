//! `--metrics-addr`: the run's counters in Prometheus's text format at `GET /metrics`, served on
//! the engine's own runtime (a request costs one snapshot of the counters).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Hosts given labels of their own at most (the busiest), so the label set stays bounded.
const HOSTS: usize = 8;
/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Where the numbers come from.
#[derive(Clone)]
pub(crate) struct Sources {
    pub(crate) monitor: Arc<haul::Monitor>,
    pub(crate) queue: Option<Arc<dyn Fn() -> haul::queue::WorkerTotals + Send + Sync>>,
}

/// Listens on `addr` now (so a bad address is an error before the run starts) and serves until
/// the process ends.
pub(crate) async fn serve(addr: &str, sources: Sources) -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let sources = sources.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, &sources)).await;
            });
        }
    });
    Ok(local)
}

async fn answer(mut stream: tokio::net::TcpStream, sources: &Sources) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let wanted = head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?");
    let (status, body) = if wanted {
        ("200 OK", render(sources))
    } else {
        ("404 Not Found", "only /metrics is here\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// A label value with `\`, `"` and line ends escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// The text of one scrape.
pub(crate) fn render(sources: &Sources) -> String {
    let stats = sources.monitor.stats();
    let mut out = String::with_capacity(2048);
    #[expect(clippy::cast_precision_loss, reason = "counters far below 2^52")]
    let n = |v: u64| v as f64;
    metric(
        &mut out,
        "haul_jobs_total",
        "counter",
        "Jobs ended, by outcome.",
        &[
            ("{outcome=\"done\"}".into(), n(stats.done)),
            ("{outcome=\"skipped\"}".into(), n(stats.skipped)),
            ("{outcome=\"failed\"}".into(), n(stats.failed)),
        ],
    );
    metric(
        &mut out,
        "haul_jobs_read_total",
        "counter",
        "Jobs read from the input.",
        &[(String::new(), n(stats.read))],
    );
    metric(
        &mut out,
        "haul_bad_lines_total",
        "counter",
        "Manifest lines refused.",
        &[(String::new(), n(stats.bad_lines))],
    );
    metric(
        &mut out,
        "haul_bytes_total",
        "counter",
        "Body bytes received.",
        &[(String::new(), n(stats.bytes))],
    );
    metric(
        &mut out,
        "haul_retries_total",
        "counter",
        "Retries scheduled.",
        &[(String::new(), n(stats.retries))],
    );
    metric(
        &mut out,
        "haul_in_flight",
        "gauge",
        "Transfers in flight.",
        &[(String::new(), n(stats.active))],
    );
    let mut hosts = sources.monitor.hosts();
    hosts.truncate(HOSTS);
    let per_host = |f: &dyn Fn(&haul::HostView) -> f64| -> Vec<(String, f64)> {
        hosts
            .iter()
            .map(|h| (format!("{{host=\"{}\"}}", label(&h.host)), f(h)))
            .collect()
    };
    #[expect(clippy::cast_precision_loss, reason = "limits and counts far below 2^52")]
    {
        metric(
            &mut out,
            "haul_host_limit",
            "gauge",
            "Requests the host may have in flight now (its adaptive limit); the busiest hosts only.",
            &per_host(&|h| h.limit as f64),
        );
        metric(
            &mut out,
            "haul_host_in_flight",
            "gauge",
            "Requests in flight to the host.",
            &per_host(&|h| h.in_flight as f64),
        );
        metric(
            &mut out,
            "haul_host_cooldown_seconds",
            "gauge",
            "How long the host stays paused (Retry-After, an outage); 0 when it is not.",
            &per_host(&|h| h.paused_for.map_or(0.0, |d| d.as_secs_f64())),
        );
        metric(
            &mut out,
            "haul_host_refusals_total",
            "counter",
            "429 answers of the host.",
            &per_host(&|h| h.refusals as f64),
        );
    }
    if let Some(queue) = &sources.queue {
        let totals = queue();
        metric(
            &mut out,
            "haul_queue_results_total",
            "counter",
            "Results written to the queue, and refused (the job had been taken over).",
            &[
                ("{result=\"recorded\"}".into(), n(totals.recorded)),
                ("{result=\"refused\"}".into(), n(totals.rejected)),
            ],
        );
        metric(
            &mut out,
            "haul_queue_results_pending",
            "gauge",
            "Results waiting for their group commit (the archive's lag).",
            &[(String::new(), n(totals.pending))],
        );
    }
    out
}
