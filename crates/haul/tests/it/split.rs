//! Issue 11: segmented transfers against the fault server throttled per response (per
//! connection): speed-up, work stealing around a slow connection, servers without ranges or
//! that lie about them, and a file that changes mid-transfer.

use std::time::{Duration, Instant};

use haul::Format;
use haul_test::{FaultServer, body_for, sha256_hex};

use crate::support::{config, run, sha256_file};

const MIB: u64 = 1024 * 1024;
/// Bytes per second each response is throttled to.
const RATE: u64 = 4_000_000;

fn split_config(out: &std::path::Path, split: usize) -> haul::ConfigBuilder {
    config(out)
        .split(split)
        .min_split_size(MIB)
        .per_host(8)
        .retry_wait(Duration::from_millis(50))
}

/// Fetches `url` with `split` connections; returns the time taken and the requests' Range
/// headers the server saw for it.
async fn fetch(url: &str, name: &str, size: u64, split: usize) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (summary, _) = run(
        split_config(&tmp.path().join("out"), split).build(),
        &format!("{url}\n"),
        Format::Plain,
    )
    .await;
    let took = started.elapsed();
    assert_eq!(summary.done, 1, "{summary:?}");
    let file = tmp.path().join("out").join(haul_test_name(url));
    assert_eq!(
        sha256_file(&file),
        sha256_hex(&body_for(name, size)),
        "the whole file, byte for byte"
    );
    let parts = tmp.path().join("out/.haul/parts");
    assert_eq!(std::fs::read_dir(parts).unwrap().count(), 0, "no part file left");
    took
}

fn haul_test_name(url: &str) -> String {
    crate::support::flat_name(url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_connections_beat_one_on_a_per_connection_throttle() {
    let server = FaultServer::start().await;
    let size = 64 * MIB;
    let one = fetch(
        &server.url("one.bin", size, &format!("rate={RATE}")),
        "one.bin",
        size,
        1,
    )
    .await;
    let eight = fetch(
        &server.url("eight.bin", size, &format!("rate={RATE}")),
        "eight.bin",
        size,
        8,
    )
    .await;
    assert_eq!(server.hits("/f/one.bin"), 1, "--split 1 is one stream");
    assert!(
        server.hits("/f/eight.bin") >= 8,
        "{} requests",
        server.hits("/f/eight.bin")
    );
    let ratio = one.as_secs_f64() / eight.as_secs_f64();
    assert!(ratio >= 5.0, "--split 8 {eight:?} vs --split 1 {one:?}: {ratio:.1}x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_connection_does_not_hold_the_file_back() {
    let server = FaultServer::start().await;
    let size = 16 * MIB;
    let even = fetch(
        &server.url("even.bin", size, &format!("rate={RATE}")),
        "even.bin",
        size,
        8,
    )
    .await;
    // The first request (the one that starts the file) runs 10 times slower than the others.
    let faults = format!("rate={RATE}&slow_first=10");
    let slow = fetch(&server.url("slow.bin", size, &faults), "slow.bin", size, 8).await;
    let ratio = slow.as_secs_f64() / even.as_secs_f64();
    assert!(
        ratio <= 1.5,
        "one slow connection: {slow:?} against {even:?} ({ratio:.2}x)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_without_ranges_get_one_stream() {
    let server = FaultServer::start().await;
    let size = 8 * MIB;
    // No Accept-Ranges: never split.
    fetch(
        &server.url("plain.bin", size, "rate=16000000&norange=1"),
        "plain.bin",
        size,
        8,
    )
    .await;
    assert_eq!(server.hits("/f/plain.bin"), 1);
    // Accept-Ranges, yet ranges ignored: the segment's 200 stops the split, and the file is
    // fetched again as one stream.
    fetch(
        &server.url("liar.bin", size, "rate=2000000&norange=lie"),
        "liar.bin",
        size,
        8,
    )
    .await;
    let hits = server.hits("/f/liar.bin");
    assert!((2..=10).contains(&hits), "{hits} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_that_changes_mid_transfer_is_fetched_again_whole() {
    let server = FaultServer::start().await;
    let size = 8 * MIB;
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("moving.bin", size, "rate=4000000&etag=changing");
    let (summary, _) = run(
        split_config(&tmp.path().join("out"), 8).build(),
        &format!("{url}\n"),
        Format::Plain,
    )
    .await;
    assert_eq!(summary.done, 1, "{summary:?}");
    let file = std::fs::read(tmp.path().join("out").join(haul_test_name(&url))).unwrap();
    // Every answer is another version: the file is exactly one of them, never a mix.
    let hits = server.hits("/f/moving.bin");
    let whole = (1..=hits).any(|v| file == haul_test::body_version("moving.bin", size, v));
    assert!(whole, "the file is one version, whole ({hits} requests)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_range_is_retried_alone() {
    let server = FaultServer::start().await;
    let size = 16 * MIB;
    // The third request (a range, once the split began) is cut after 512 KiB.
    let url = server.url("cut.bin", size, &format!("rate={RATE}&reset=524288&only=3"));
    fetch(&url, "cut.bin", size, 8).await;
    let requests: Vec<bool> = server
        .headers_seen()
        .iter()
        .filter(|(path, _)| path == "/f/cut.bin")
        .map(|(_, headers)| headers.contains_key("range"))
        .collect();
    assert!(!requests[0], "the first request asks for the whole file");
    assert!(requests.len() >= 4, "{requests:?}");
    assert!(
        requests[1..].iter().all(|ranged| *ranged),
        "after the cut only ranges are asked for, never the whole file again: {requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_stay_within_the_hosts_limit() {
    let server = FaultServer::start().await;
    let size = 16 * MIB;
    let url = server.url("capped.bin", size, &format!("rate={RATE}"));
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let cfg = split_config(&tmp.path().join("out"), 8)
        .per_host(2)
        .adaptive(false)
        .build();
    let (summary, _) = run(cfg, &format!("{url}\n"), Format::Plain).await;
    let took = started.elapsed();
    assert_eq!(summary.done, 1, "{summary:?}");
    assert!(server.hits("/f/capped.bin") >= 2, "it was split");
    // Two connections at 4 MB/s need 2.1 s for 16 MiB; eight would take 0.6 s.
    assert!(took >= Duration::from_millis(1700), "--per-host 2 held: {took:?}");
    let file = tmp.path().join("out").join(haul_test_name(&url));
    assert_eq!(sha256_file(&file), sha256_hex(&body_for("capped.bin", size)));
}
