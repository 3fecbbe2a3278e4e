//! One test per fault of the fault server: bytes on disk, attempts, archive rows.

use std::time::Duration;

use haul::{ArchiveMode, Format, JobStatus};
use haul_test::{FaultServer, body_for, sha256_hex};

use crate::support::{config, run, sha256_file};

async fn one(
    faults: &str,
    size: u64,
    tune: impl FnOnce(haul::ConfigBuilder) -> haul::ConfigBuilder,
) -> (crate::support::Seen, tempfile::TempDir, FaultServer) {
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("x.bin", size, faults);
    let (_, reports) = run(
        tune(config(&tmp.path().join("out"))).build(),
        &format!("{url}\n"),
        Format::Plain,
    )
    .await;
    let report = reports.by_id().remove(&url).unwrap();
    (report, tmp, server)
}

fn assert_file(tmp: &tempfile::TempDir, size: u64) {
    assert_eq!(
        sha256_file(&tmp.path().join("out/x.bin")),
        sha256_hex(&body_for("x.bin", size))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_body_resumes_with_range() {
    // Throttled so the bytes before the reset reach the client (an abort can discard unread data).
    let (report, tmp, server) = one("reset=300000&times=1&rate=3000000", 1_000_000, |c| c).await;
    assert_eq!(report.status, JobStatus::Done);
    assert_eq!(report.attempts, 2);
    assert_eq!(report.http_status, Some(206), "the second attempt continued the part");
    assert_file(&tmp, 1_000_000);
    let ranges: Vec<_> = server
        .headers_seen()
        .into_iter()
        .filter_map(|(_, h)| h.get("range").cloned())
        .collect();
    assert_eq!(ranges.len(), 1);
    assert!(ranges[0].to_str().unwrap().starts_with("bytes="), "{ranges:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_body_is_retried_never_renamed() {
    let (report, tmp, _server) = one("short=1000&times=2", 50_000, |c| c).await;
    assert_eq!(report.status, JobStatus::Done);
    assert_eq!(report.attempts, 3);
    assert_file(&tmp, 50_000);
    let (report, tmp, _server) = one("short=1000", 50_000, |c| c.retries(1)).await;
    assert_eq!(report.status, JobStatus::Failed);
    assert!(
        !tmp.path().join("out/x.bin").exists(),
        "a short body never reaches the final name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_503_and_429_are_obeyed() {
    let started = std::time::Instant::now();
    let (report, tmp, server) = one("status=503&retry_after=1&times=1", 5_000, |c| c).await;
    assert_eq!(report.status, JobStatus::Done);
    assert_eq!(report.attempts, 2);
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "waited for Retry-After"
    );
    assert_eq!(server.hits("/f/x.bin"), 2);
    assert_file(&tmp, 5_000);
    let (report, _, _) = one("status=429&retry_after=0&times=2", 5_000, |c| c).await;
    assert_eq!((report.status, report.attempts), (JobStatus::Done, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_are_not_retried() {
    let (report, _, server) = one("status=404", 5_000, |c| c).await;
    assert_eq!(
        (report.status, report.attempts, report.http_status),
        (JobStatus::Failed, 1, Some(404))
    );
    assert_eq!(server.hits("/f/x.bin"), 1);
    let (report, _, server) = one("status=500", 5_000, |c| c.retries(2)).await;
    assert_eq!((report.status, report.attempts), (JobStatus::Failed, 3));
    assert_eq!(server.hits("/f/x.bin"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_etag_restarts_from_zero() {
    // The first attempt dies mid-body; on resume the server's ETag changed, so If-Range makes it
    // send the whole new version with 200 and the part restarts.
    let (report, tmp, _server) = one("reset=200000&times=1&etag=changing", 600_000, |c| c).await;
    assert_eq!(report.status, JobStatus::Done);
    assert_eq!(report.http_status, Some(200));
    let got = std::fs::read(tmp.path().join("out/x.bin")).unwrap();
    assert_eq!(got.len(), 600_000);
    assert_ne!(
        sha256_hex(&got),
        sha256_hex(&body_for("x.bin", 600_000)),
        "the new version, not a splice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_range_restarts_and_wrong_content_range_is_refused() {
    let (report, tmp, _) = one("reset=100000&times=1&norange=1", 400_000, |c| c).await;
    assert_eq!((report.status, report.http_status), (JobStatus::Done, Some(200)));
    assert_file(&tmp, 400_000);
    let (report, _, _) = one("reset=100000&badrange=1", 400_000, |c| c.retries(2)).await;
    assert_eq!(report.status, JobStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_validators_means_restart_not_append() {
    let (report, tmp, server) = one("reset=100000&times=1&novalidators=1", 300_000, |c| c).await;
    assert_eq!(report.status, JobStatus::Done);
    assert_file(&tmp, 300_000);
    assert!(
        server.headers_seen().iter().all(|(_, h)| !h.contains_key("range")),
        "no blind Range"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_hits_the_read_timeout_and_slow_hits_lowest_speed() {
    let (report, tmp, _) = one("stall=1&times=1", 10_000, |c| {
        c.read_timeout(Duration::from_millis(300))
    })
    .await;
    assert_eq!((report.status, report.attempts), (JobStatus::Done, 2));
    assert_file(&tmp, 10_000);
    let (report, _, _) = one("rate=2000", 100_000, |c| {
        c.retries(0).lowest_speed(Some((50_000, Duration::from_millis(300))))
    })
    .await;
    assert_eq!(report.status, JobStatus::Failed);
    assert_eq!(report.reason.as_deref(), Some("too slow"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_size_refuses_bodies_with_and_without_length() {
    let (report, tmp, _) = one("", 100_000, |c| c.max_size(Some(50_000)).archive(ArchiveMode::Off)).await;
    assert_eq!(
        (report.status, report.reason.as_deref()),
        (JobStatus::Failed, Some("too large"))
    );
    let (report, tmp2, _) = one("chunked=1", 100_000, |c| c.max_size(Some(50_000))).await;
    assert_eq!(
        (report.status, report.reason.as_deref()),
        (JobStatus::Failed, Some("too large"))
    );
    for t in [tmp, tmp2] {
        let out = t.path().join("out");
        assert!(!out.join("x.bin").exists() && !haul::store::part_path(&out, "x.bin").exists());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_mixed_faults() {
    let server = FaultServer::start_with(
        haul_test::Mix {
            seed: 7,
            unavailable: 10,
            reset: 3,
            short: 3,
            changed_validator: 2,
            retry_after: 0,
        },
        "127.0.0.1:0",
    )
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut manifest = String::new();
    let mut expected = Vec::new();
    for i in 0..5_000u64 {
        let name = format!("s{i}.bin");
        let size = 1_000 + (i * 7_919) % 60_000;
        manifest.push_str(&server.url(&name, size, ""));
        manifest.push('\n');
        expected.push((name, size));
    }
    let cfg = config(&out)
        .digest(haul::DigestKind::Blake3)
        .concurrency(32)
        .per_host(32)
        .retries(10)
        .max_retry_wait(Duration::from_millis(50))
        .build();
    let started = std::time::Instant::now();
    let (summary, _) = run(cfg, &manifest, Format::Plain).await;
    assert!(started.elapsed() < Duration::from_secs(120));
    assert_eq!(summary.done, 5_000, "{summary:?}");
    assert!(
        summary.retries > 400,
        "faults were injected and retried: {}",
        summary.retries
    );
    let reader = haul::archive::ArchiveReader::open(&out.join(".haul/archive.sqlite")).unwrap();
    for (name, size) in expected {
        let path = out.join(&name);
        let bytes = std::fs::read(&path).unwrap();
        // A changed validator on resume serves another version: the size always matches, and the
        // archive holds exactly the digest of what is on disk.
        assert_eq!(bytes.len() as u64, size);
        let row = reader.lookup(&server.url(&name, size, "")).unwrap().unwrap();
        assert_eq!(row.blake3.as_deref(), Some(haul_test::blake3_hex(&bytes).as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_not_satisfiable_on_a_complete_part_finishes_it() {
    // A crash after the last byte but before the rename: the part is complete and the archive
    // holds its validators. The rerun asks for the bytes after it, gets 416, verifies, renames.
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let size = 2_000_000;
    let url = server.url("x.bin", size, "");
    let part = haul::store::part_path(&out, "x.bin");
    std::fs::create_dir_all(part.parent().unwrap()).unwrap();
    std::fs::write(&part, body_for("x.bin", size)).unwrap();
    let archive = haul::archive::Archive::open(&out.join(".haul/archive.sqlite"), false).unwrap();
    let journal = archive.writer(10, Duration::from_millis(10), false).unwrap();
    journal
        .record(haul::archive::Record {
            id: url.clone(),
            url: url.clone(),
            path: Some("x.bin".into()),
            size: Some(size),
            sha256: None,
            blake3: None,
            segments: None,
            verified: false,
            etag: Some(format!("\"x.bin-{size}-v0\"")),
            last_modified: None,
            status: haul::archive::RowStatus::Partial,
            http_status: Some(200),
            error_class: None,
            error: None,
            attempts: 1,
            spec: None,
        })
        .unwrap();
    journal.close().unwrap();
    drop(archive);
    let (summary, reports) = run(config(&out).build(), &format!("{url}\n"), Format::Plain).await;
    assert_eq!(summary.done, 1, "{summary:?}");
    let report = reports.by_id().remove(&url).unwrap();
    assert_eq!((report.attempts, report.http_status), (1, Some(416)));
    assert_file(&tmp, size);
    assert!(!part.exists());
    let range = server.headers_seen()[0].1.get("range").cloned().unwrap();
    assert_eq!(range, format!("bytes={size}-").as_str());
}
