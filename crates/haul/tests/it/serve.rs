//! Downloads from a real nginx: every format, bad lines, conflicts, existing files, 404, h2c.

use haul::{ArchiveMode, Format, JobStatus, OnExists};
use haul_test::Nginx;

use crate::support::{config, files_under, make_files, run, sha256_file};

struct Site {
    _tmp: tempfile::TempDir,
    nginx: Nginx,
    files: Vec<(String, String)>,
    out: std::path::PathBuf,
}

fn site(count: usize, max: u64) -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    let files = make_files(&www, count, max);
    let nginx = Nginx::start(&www, &tmp.path().join("nginx"));
    let out = tmp.path().join("out");
    Site {
        _tmp: tmp,
        nginx,
        files,
        out,
    }
}

fn assert_all_downloaded(site: &Site, sub: &str) {
    for (name, sha) in &site.files {
        let path = site.out.join(sub).join(name);
        assert_eq!(&sha256_file(&path), sha, "{}", path.display());
    }
    let parts = site.out.join(".haul/parts");
    assert!(
        !parts.exists() || std::fs::read_dir(&parts).unwrap().next().is_none(),
        "no part file is left after a clean run"
    );
    assert!(
        files_under(&site.out)
            .iter()
            .all(|p| !p.to_string_lossy().ends_with(".part"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_list_with_a_404_and_a_bad_line() {
    let s = site(300, 300_000);
    let mut manifest = String::from("# a comment\n\n");
    for (name, _) in &s.files {
        manifest.push_str(&format!("{}/{name}\n", s.nginx.base()));
    }
    manifest.push_str(&format!("{}/missing.bin\n", s.nginx.base()));
    manifest.push_str("not a url\n");
    let (summary, reports) = run(config(&s.out).build(), &manifest, Format::Plain).await;
    assert_eq!(summary.done, 300);
    assert_eq!(summary.failed_total(), 1);
    assert_eq!(summary.bad_lines, 1);
    assert_all_downloaded(&s, "");
    let missing = reports
        .by_id()
        .remove(&format!("{}/missing.bin", s.nginx.base()))
        .unwrap();
    assert_eq!(missing.status, JobStatus::Failed);
    assert_eq!(missing.http_status, Some(404));
    assert_eq!(missing.line, 303);
    assert!(!s.out.join("missing.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonl_with_paths_sizes_and_checksums() {
    let s = site(50, 100_000);
    let mut manifest = String::new();
    for (i, (name, sha)) in s.files.iter().enumerate() {
        let size = std::fs::metadata(s._tmp.path().join("www").join(name)).unwrap().len();
        manifest.push_str(&format!(
            "{{\"url\":\"{}/{name}\",\"id\":{i},\"path\":\"sub/{name}\",\"size\":{size},\"sha256\":\"{sha}\"}}\n",
            s.nginx.base()
        ));
    }
    // A checksum that cannot match: retried, then failed, never renamed into place.
    let (name, _) = &s.files[0];
    manifest.push_str(&format!(
        "{{\"url\":\"{}/{name}\",\"id\":\"bad\",\"path\":\"wrong.bin\",\"sha256\":\"{}\"}}\n",
        s.nginx.base(),
        "0".repeat(64)
    ));
    let (summary, reports) = run(config(&s.out).retries(2).build(), &manifest, Format::Jsonl).await;
    assert_eq!(summary.done, 50, "{summary:?}");
    assert_all_downloaded(&s, "sub");
    let bad = reports.by_id().remove("bad").unwrap();
    assert_eq!(bad.status, JobStatus::Failed);
    assert_eq!(bad.attempts, 3);
    assert!(bad.error.unwrap().contains("sha256 mismatch"));
    assert!(!s.out.join("wrong.bin").exists() && !haul::store::part_path(&s.out, "wrong.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_with_header_and_path_conflict() {
    let s = site(20, 50_000);
    let mut manifest = String::from("url,id,path\n");
    for (i, (name, _)) in s.files.iter().enumerate() {
        manifest.push_str(&format!("{}/{name},{i},{name}\n", s.nginx.base()));
    }
    // Another job mapping to an existing job's path: a reported conflict, not an overwrite.
    manifest.push_str(&format!("{}/{},dup,{}\n", s.nginx.base(), s.files[1].0, s.files[0].0));
    manifest.push_str("http://[broken,x,y\n");
    let (summary, reports) = run(config(&s.out).build(), &manifest, Format::Csv).await;
    assert_eq!(summary.done, 20);
    assert_eq!(summary.bad_lines, 1);
    let dup = reports.by_id().remove("dup").unwrap();
    assert_eq!(dup.status, JobStatus::Failed);
    assert_eq!(dup.reason.as_deref(), Some("path conflict"));
    assert_all_downloaded(&s, "");
}

/// A run without archive under one `--on-exists` policy.
async fn with_policy(out: &std::path::Path, manifest: &str, policy: OnExists) -> haul::Summary {
    run(
        config(out).archive(ArchiveMode::Off).on_exists(policy).build(),
        manifest,
        Format::Plain,
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_exists_policies() {
    let s = site(3, 10_000);
    let url = |i: usize| format!("{}/{}", s.nginx.base(), s.files[i].0);
    std::fs::create_dir_all(&s.out).unwrap();
    let manifest = format!("{}\n{}\n{}\n", url(0), url(1), url(2));
    let stale = b"an older version".to_vec();
    let fresh = |p: &str| std::fs::write(s.out.join(p), &stale).unwrap();

    // fail: the existing files stay as they were, the jobs fail.
    for (name, _) in &s.files {
        fresh(name);
    }
    let summary = with_policy(&s.out, &manifest, OnExists::Fail).await;
    assert_eq!(summary.failed_total(), 3);
    assert_eq!(std::fs::read(s.out.join(&s.files[0].0)).unwrap(), stale);

    // rename: the download goes beside the existing file.
    let summary = with_policy(&s.out, &manifest, OnExists::Rename).await;
    assert_eq!(summary.done, 3);
    let renamed = s.files[0].0.replace(".bin", " (1).bin");
    assert_eq!(sha256_file(&s.out.join(renamed)), s.files[0].1);
    assert_eq!(std::fs::read(s.out.join(&s.files[0].0)).unwrap(), stale);

    // skip (default) with nothing known to compare: adopted as is, no download, and said to
    // be unverified.
    let before = s.nginx.access_log().len();
    let summary = with_policy(&s.out, &manifest, OnExists::Skip).await;
    assert_eq!(summary.skipped.get("exists, unverified"), Some(&3), "{summary:?}");
    assert_eq!(summary.unverified, 3);
    assert_eq!(s.nginx.access_log().len(), before, "adopting makes no request");

    // overwrite: replaced with the served bytes.
    let summary = with_policy(&s.out, &manifest, OnExists::Overwrite).await;
    assert_eq!(summary.done, 3);
    assert_all_downloaded(&s, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_against_nginx() {
    let s = site(200, 20_000);
    let manifest: String = s
        .files
        .iter()
        .map(|(n, _)| format!("{}/{n}\n", s.nginx.h2_base()))
        .collect();
    let (summary, _) = run(
        config(&s.out).http2_prior_knowledge(true).build(),
        &manifest,
        Format::Plain,
    )
    .await;
    assert_eq!(summary.done, 200, "{summary:?}");
    assert_all_downloaded(&s, "");
    let log = s.nginx.access_log();
    assert!(
        log.iter().filter(|l| l.contains("HTTP/2.0")).count() >= 200,
        "requests went over HTTP/2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_skips_archived_jobs_without_requests() {
    let s = site(100, 20_000);
    let manifest: String = s
        .files
        .iter()
        .map(|(n, _)| format!("{}/{n}\n", s.nginx.base()))
        .collect();
    // `--digest sha256`: the archive records every file's SHA-256 (checked below).
    let sha = config(&s.out).digest(haul::DigestKind::Sha256).build();
    let (first, _) = run(sha, &manifest, Format::Plain).await;
    assert_eq!(first.done, 100);
    let requests = s.nginx.access_log().len();
    let (second, _) = run(config(&s.out).build(), &manifest, Format::Plain).await;
    assert_eq!(second.skipped.get("archived"), Some(&100));
    assert_eq!(s.nginx.access_log().len(), requests, "no request for archived jobs");
    let reader = haul::archive::ArchiveReader::open(&s.out.join(".haul/archive.sqlite")).unwrap();
    for (name, sha) in &s.files {
        let row = reader.lookup(&format!("{}/{name}", s.nginx.base())).unwrap().unwrap();
        assert_eq!(row.status, haul::archive::RowStatus::Done);
        assert_eq!(row.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(row.blake3, None, "only the digest asked for");
        assert_eq!(row.path.as_deref(), Some(name.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_negotiates_h2_and_refuses_downgrades() {
    let s = site(50, 20_000);
    let manifest: String = s
        .files
        .iter()
        .map(|(n, _)| format!("{}/{n}\n", s.nginx.tls_base()))
        .collect();
    // An unknown self-signed certificate: every job fails, nothing is written.
    let (summary, _) = run(config(&s.out).build(), &manifest, Format::Plain).await;
    assert_eq!(summary.failed_total(), 50, "{summary:?}");
    assert_eq!(summary.retries, 0, "a certificate that does not verify is not retried");
    assert!(files_under(&s.out).is_empty());
    // Trusting its certificate: downloaded over HTTP/2, chosen by ALPN.
    let (summary, reports) = run(
        config(&s.out).ca_certs(Some(s.nginx.certificate.clone())).build(),
        &manifest,
        Format::Plain,
    )
    .await;
    assert_eq!(
        summary.done,
        50,
        "{summary:?} {:?}",
        reports.0.lock().unwrap().first().and_then(|r| r.error.clone())
    );
    assert_all_downloaded(&s, "");
    let log = s.nginx.access_log();
    let h2: Vec<&String> = log.iter().filter(|l| l.contains("HTTP/2.0")).collect();
    assert!(h2.len() >= 50);
    // Many small files over TLS + HTTP/2 share a connection (the access log's `conn=` field).
    let connections: std::collections::HashSet<&str> = h2
        .iter()
        .filter_map(|l| l.rsplit_once("conn=").map(|(_, c)| c))
        .collect();
    assert!(
        connections.len() <= 2,
        "{} requests over {} connections",
        h2.len(),
        connections.len()
    );
    // https -> http redirects are refused unless allowed.
    std::fs::write(s._tmp.path().join("www/downgraded"), b"plain").unwrap();
    let down = format!("{}/downgrade\n", s.nginx.tls_base());
    let trusted = || {
        config(&s.out)
            .retries(0)
            .ca_certs(Some(s.nginx.certificate.clone()))
            .archive(ArchiveMode::Off)
    };
    let (summary, reports) = run(trusted().build(), &down, Format::Plain).await;
    assert_eq!(summary.failed_total(), 1);
    let error = reports.0.lock().unwrap()[0].error.clone().unwrap();
    assert!(error.contains("from https to http"), "{error}");
    let (summary, _) = run(trusted().allow_https_downgrade(true).build(), &down, Format::Plain).await;
    assert_eq!(summary.done, 1);
    assert_eq!(std::fs::read(s.out.join("downgrade")).unwrap(), b"plain");
    // --insecure accepts the unknown certificate.
    let insecure = s._tmp.path().join("insecure");
    let (summary, _) = run(config(&insecure).insecure(true).build(), &manifest, Format::Plain).await;
    assert_eq!(summary.done, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_servers_own_self_signed_certificate_given_with_ca_cert_is_trusted() {
    let s = site(5, 50_000);
    let base = format!("https://127.0.0.1:{}", s.nginx.self_signed_port);
    let manifest: String = s.files.iter().map(|(n, _)| format!("{base}/{n}\n")).collect();
    // Unknown: refused, in words, with what to do.
    let (summary, reports) = run(config(&s.out).retries(0).build(), &manifest, Format::Plain).await;
    assert_eq!(summary.failed_total(), 5, "{summary:?}");
    let error = reports.0.lock().unwrap()[0].error.clone().unwrap();
    assert!(
        error.contains("TLS: the server") && error.contains("--ca-cert"),
        "{error}"
    );
    assert!(
        !error.contains("Other(") && !error.contains("OtherError"),
        "a debug dump: {error}"
    );
    // Given: its very certificate (made by `openssl req -x509`, so marked as a CA) is trusted.
    let (summary, reports) = run(
        config(&s.out).ca_certs(Some(s.nginx.self_signed.clone())).build(),
        &manifest,
        Format::Plain,
    )
    .await;
    assert_eq!(
        summary.done,
        5,
        "{:?}",
        reports.0.lock().unwrap().first().and_then(|r| r.error.clone())
    );
    assert_all_downloaded(&s, "");
    // Another certificate does not vouch for it; nor does its own for another name.
    let other = s._tmp.path().join("other");
    let (summary, _) = run(
        config(&other)
            .retries(0)
            .ca_certs(Some(s.nginx.certificate.clone()))
            .build(),
        &manifest,
        Format::Plain,
    )
    .await;
    assert_eq!(summary.failed_total(), 5);
    let by_name = format!("https://localhost:{}/{}\n", s.nginx.self_signed_port, s.files[0].0);
    let (summary, reports) = run(
        config(&other)
            .retries(0)
            .ca_certs(Some(s.nginx.self_signed.clone()))
            .build(),
        &by_name,
        Format::Plain,
    )
    .await;
    assert_eq!(summary.failed_total(), 1);
    let error = reports.0.lock().unwrap()[0].error.clone().unwrap();
    assert!(error.contains("TLS:"), "{error}");
    assert!(files_under(&other).is_empty());
}
