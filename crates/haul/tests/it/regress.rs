//! Issue 8 regressions, one test per class of "Why" that the library can show: haul's own
//! files, containment under races, secrets and redirects, failure scope, panics.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use haul::{Engine, Format, JobStatus, Layout, OnExists};
use haul_test::{FaultServer, body_for, sha256_hex};

use crate::support::{config, encode, flat_name, run, sha256_file};

/// Class 5: no manifest path or server name reaches haul's state; `x` and `x.part` are two
/// files; a symlinked state directory is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haul_state_is_out_of_reach() {
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let url = |name: &str, extra: &str| server.url(name, 3000, extra);
    let manifest = [
        format!("{{\"url\":\"{}\",\"path\":\".haul/archive.sqlite\"}}", url("a", "")),
        format!("{{\"url\":\"{}\",\"path\":\"sub/.HAUL/x\"}}", url("b", "")),
        format!("{{\"url\":\"{}\",\"path\":\"x\"}}", url("c", "")),
        format!("{{\"url\":\"{}\",\"path\":\"x.part\"}}", url("d", "")),
        format!(
            "{{\"url\":\"{}\"}}",
            url(
                "e",
                &format!("disposition={}", encode("attachment; filename=\".haul\""))
            )
        ),
    ]
    .join("\n");
    let cfg = config(&out)
        .on_exists(OnExists::Overwrite)
        .content_disposition(true)
        .build();
    let (summary, reports) = run(cfg, &manifest, Format::Jsonl).await;
    assert_eq!((summary.done, summary.failed_total()), (3, 2), "{summary:?}");
    for refused in [url("a", ""), url("b", "")] {
        let report = &reports.by_id()[&refused];
        assert_eq!(report.reason.as_deref(), Some("bad path"), "{report:?}");
        assert!(report.error.as_deref().unwrap().contains("haul's own state directory"));
    }
    assert_eq!(sha256_file(&out.join("x")), sha256_hex(&body_for("c", 3000)));
    assert_eq!(sha256_file(&out.join("x.part")), sha256_hex(&body_for("d", 3000)));
    assert_eq!(sha256_file(&out.join("_haul")), sha256_hex(&body_for("e", 3000)));
    let reader = haul::archive::ArchiveReader::open(&out.join(".haul/archive.sqlite")).unwrap();
    assert_eq!(
        reader.lookup(&url("c", "")).unwrap().unwrap().status,
        haul::archive::RowStatus::Done
    );
    let state = std::fs::metadata(out.join(".haul")).unwrap();
    assert_eq!(
        state.permissions().mode() & 0o777,
        0o700,
        "the state directory is private"
    );
    let archive = std::fs::metadata(out.join(".haul/archive.sqlite")).unwrap();
    assert_eq!(
        archive.permissions().mode() & 0o777,
        0o600,
        "the archive holds URLs: private"
    );

    // A state directory that is a symlink: refused at start, nothing written through it.
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let linked = tmp.path().join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    std::os::unix::fs::symlink(&elsewhere, linked.join(".haul")).unwrap();
    let jobs = haul::ManifestReader::new(std::io::Cursor::new(format!("{}\n", url("f", ""))), Format::Plain);
    let err = Engine::new(config(&linked).build())
        .run(jobs, Arc::new(haul::NullReporter))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("haul's own directory"), "{err}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
}

/// Class 6: a directory of the output tree swapped for a symlink to a canary directory, again
/// and again while haul writes into it: nothing ever lands in the canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containment_holds_while_the_tree_changes() {
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let canary = tmp.path().join("canary");
    std::fs::create_dir_all(out.join("sub")).unwrap();
    std::fs::create_dir_all(&canary).unwrap();
    let manifest: String = (0..400)
        .map(|i| format!("{}\tsub/f{i}.bin\n", server.url(&format!("f{i}"), 2000, "delay=2")))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, out, canary) = (Arc::clone(&stop), out.clone(), canary.clone());
        std::thread::spawn(move || {
            let (sub, real) = (out.join("sub"), out.join("sub.real"));
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut swaps = 0u32;
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                // Directory out, symlink in; then back.
                if std::fs::rename(&sub, &real).is_ok() {
                    let _ = std::os::unix::fs::symlink(&canary, &sub);
                    swaps += 1;
                    std::thread::sleep(Duration::from_micros(300));
                    let _ = std::fs::remove_file(&sub);
                    let _ = std::fs::rename(&real, &sub);
                }
                std::thread::sleep(Duration::from_micros(300));
            }
            swaps
        })
    };
    let (summary, _) = run(config(&out).concurrency(16).build(), &manifest, Format::Plain).await;
    stop.store(true, Ordering::SeqCst);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 10, "the tree changed under the run ({swaps} swaps)");
    assert_eq!(summary.done + summary.failed_total(), 400, "{summary:?}");
    assert_eq!(
        std::fs::read_dir(&canary).unwrap().count(),
        0,
        "nothing written through the symlink ({summary:?})"
    );
    // Whatever was done is in the output tree with the right bytes.
    for i in 0..400 {
        for dir in ["sub", "sub.real"] {
            let file = out.join(dir).join(format!("f{i}.bin"));
            if file.exists() {
                assert_eq!(sha256_file(&file), sha256_hex(&body_for(&format!("f{i}"), 2000)));
            }
        }
    }
}

/// Class 8: `Authorization`, `Cookie` and `--secret-header` names from the configuration stay
/// with the job's origin; a chain of same- and cross-origin hops counts every hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_headers_stay_home_and_every_hop_counts() {
    let origin = FaultServer::start().await;
    let other = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let target = other.url("moved.bin", 100, "");
    let via = format!("{}/redirect?to={}", origin.base(), encode(&target));
    let cfg = config(&tmp.path().join("out"))
        .headers(vec![
            ("Authorization".into(), "Bearer h-secret".into()),
            ("Cookie".into(), "sid=h-cookie".into()),
            ("X-Api-Key".into(), "k-secret".into()),
            ("X-Plain".into(), "shared".into()),
        ])
        .secret_headers(vec!["x-api-key".into()])
        .build();
    let (summary, _) = run(cfg, &format!("{via}\n"), Format::Plain).await;
    assert_eq!(summary.done, 1, "{summary:?}");
    let at_origin = &origin.headers_seen()[0].1;
    assert_eq!(at_origin.get("authorization").unwrap(), "Bearer h-secret");
    assert_eq!(at_origin.get("x-api-key").unwrap(), "k-secret");
    let at_other = &other.headers_seen()[0].1;
    for secret in ["authorization", "cookie", "x-api-key"] {
        assert!(at_other.get(secret).is_none(), "{secret} followed the redirect");
    }
    assert_eq!(at_other.get("x-plain").unwrap(), "shared");

    // origin -> other -> origin -> other -> file: four hops, alternating origins.
    let file = other.url("end.bin", 10, "");
    let hop3 = format!("{}/redirect?to={}", origin.base(), encode(&file));
    let hop2 = format!("{}/redirect?to={}", other.base(), encode(&hop3));
    let hop1 = format!("{}/redirect?to={}", origin.base(), encode(&hop2));
    let out = tmp.path().join("hops");
    let (summary, reports) = run(
        config(&out).max_redirects(2).build(),
        &format!("{hop1}\n"),
        Format::Plain,
    )
    .await;
    assert_eq!(summary.failed_total(), 1, "{summary:?}");
    assert!(
        reports.by_id()[&hop1]
            .error
            .as_deref()
            .unwrap()
            .contains("more than 2 redirects")
    );
    let (summary, _) = run(
        config(&out).max_redirects(3).build(),
        &format!("{hop1}\n"),
        Format::Plain,
    )
    .await;
    assert_eq!(summary.done, 1, "{summary:?}");
}

/// Class 8: a file replaced with `--on-exists overwrite` keeps its permission bits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_file_keeps_its_mode() {
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("p.bin"), b"old").unwrap();
    std::fs::set_permissions(out.join("p.bin"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let url = server.url("p.bin", 500, "");
    let (summary, _) = run(
        config(&out).on_exists(OnExists::Overwrite).build(),
        &format!("{url}\n"),
        Format::Plain,
    )
    .await;
    assert_eq!(summary.done, 1);
    assert_eq!(sha256_file(&out.join("p.bin")), sha256_hex(&body_for("p.bin", 500)));
    let mode = std::fs::metadata(out.join("p.bin")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// Class 9: a destination that cannot be written (a file where its directory should be)
/// fails that job only; the others are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_destination_fails_one_job() {
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("blocker"), b"a file, not a directory").unwrap();
    let mut manifest = format!("{}\tblocker/x.bin\n", server.url("x", 100, ""));
    for i in 0..20 {
        manifest.push_str(&format!("{}\n", server.url(&format!("ok{i}.bin"), 100, "")));
    }
    let (summary, reports) = run(config(&out).build(), &manifest, Format::Plain).await;
    assert_eq!((summary.done, summary.failed_total()), (20, 1), "{summary:?}");
    assert!(summary.fatal.is_none());
    let failed = reports
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.status == JobStatus::Failed)
        .cloned()
        .unwrap();
    assert!(failed.error.unwrap().contains("\"blocker\" is a symlink or a file"));
}

/// Class 11 and 12: a repeated id is a conflict (the first wins), an exact duplicate line is
/// skipped, not failed; a panicking manifest iterator ends the run with a fatal error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_a_panicking_manifest() {
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (a, b) = (server.url("a", 100, ""), server.url("b", 100, ""));
    let manifest = format!(
        "{{\"id\":\"1\",\"url\":\"{a}\"}}\n{{\"id\":\"1\",\"url\":\"{b}\"}}\n{{\"id\":\"1\",\"url\":\"{a}\"}}\n"
    );
    let (summary, reports) = run(config(&out).build(), &manifest, Format::Jsonl).await;
    assert_eq!(summary.done, 1, "{summary:?}");
    assert_eq!(summary.skipped.get("duplicate"), Some(&1));
    assert_eq!(summary.failed.keys().next().unwrap().0, "repeated id");
    let all = reports.0.lock().unwrap().clone();
    let dup = all.iter().find(|r| r.status == JobStatus::Skipped).unwrap();
    assert_eq!((dup.line, dup.error.as_deref()), (3, Some("duplicate of line 1")));
    let repeated = all.iter().find(|r| r.status == JobStatus::Failed).unwrap();
    assert!(
        repeated.error.as_deref().unwrap().contains("repeats line 1"),
        "{repeated:?}"
    );
    assert_eq!(
        sha256_file(&out.join(flat_name(&a))),
        sha256_hex(&body_for("a", 100)),
        "the first wins"
    );
    let row = haul::archive::ArchiveReader::open(&out.join(".haul/archive.sqlite"))
        .unwrap()
        .lookup("1")
        .unwrap()
        .unwrap();
    assert_eq!(
        row.path.as_deref(),
        Some(flat_name(&a).as_str()),
        "the conflict did not overwrite the row"
    );

    let url = haul::parse_url(&server.url("c", 10, "")).unwrap();
    let jobs = std::iter::once(Ok(haul::Job::new(url))).chain(std::iter::from_fn(|| panic!("a broken source")));
    let summary = tokio::time::timeout(
        Duration::from_secs(30),
        Engine::new(config(&tmp.path().join("p")).build()).run(jobs, Arc::new(haul::NullReporter)),
    )
    .await
    .expect("the run ends")
    .unwrap();
    assert!(summary.fatal.as_deref().unwrap().contains("panicked"), "{summary:?}");
}

/// Class 5: the mirror layout renames a URL's `.haul` segment too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_layout_still_reserves_state() {
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let url = format!("{}/f/.haul?size=10", server.base());
    let (summary, _) = run(
        config(&out).layout(Layout::Mirror).build(),
        &format!("{url}\n"),
        Format::Plain,
    )
    .await;
    assert_eq!(summary.done, 1, "{summary:?}");
    let host = server.base().trim_start_matches("http://").replace(':', "_");
    assert!(Path::new(&out.join(host).join("f/_haul")).is_file());
}

/// Class 10: a Retry-After near `u64::MAX` with `--max-retry-wait` as large: no overflow, the
/// job waits (here until the run is cancelled) and is reported pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enormous_retry_after_does_not_overflow() {
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let url = server.url("w.bin", 10, &format!("status=503&retry_after={}", u64::MAX));
    let engine = Engine::new(config(&tmp.path().join("out")).max_retry_wait(Duration::MAX).build());
    let canceller = engine.canceller();
    let jobs = haul::ManifestReader::new(std::io::Cursor::new(format!("{url}\n")), Format::Plain);
    let run = engine.run(jobs, Arc::new(haul::NullReporter));
    let cancel = async {
        while server.total_hits() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        canceller.cancel();
    };
    let (summary, ()) = tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(run, cancel) })
        .await
        .expect("the run ends");
    let summary = summary.unwrap();
    assert_eq!((summary.pending, summary.done), (1, 0), "{summary:?}");
    assert_eq!(server.total_hits(), 1);
}
