//! The adversarial suite: confinement, credentials across redirects, redirect limits, encoding.
//! Each test would fail if its protection were removed; each checks that nothing was written
//! outside the output directory.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use haul::{Auth, Credentials, Format, JobStatus, Layout, OnExists};
use haul_test::FaultServer;

use crate::support::{config, encode, flat_name, run};

/// Every path under `root` (files, directories, symlinks), relative.
fn snapshot(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            out.insert(path.strip_prefix(root).unwrap().to_owned());
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            }
        }
    }
    out
}

/// Asserts that everything added under `parent` since `before` is inside `out`.
fn assert_contained(parent: &Path, before: &BTreeSet<PathBuf>, out: &str) {
    for path in snapshot(parent).difference(before) {
        assert!(
            path.starts_with(out),
            "written outside the output directory: {}",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_paths_and_symlinks_are_refused() {
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim.txt"), b"keep me").unwrap();
    // A symlinked directory and a symlinked destination inside the output tree, both pointing out.
    std::os::unix::fs::symlink(&outside, out.join("link")).unwrap();
    std::os::unix::fs::symlink(outside.join("victim.txt"), out.join("victim.txt")).unwrap();
    let before = snapshot(tmp.path());
    let url = server.url("x.bin", 100, "");
    let bad_paths = [
        "../escape.bin",
        "/tmp/abs.bin",
        "a/../../up.bin",
        "C:/win.bin",
        "ctl\u{1}.bin",
        "link/through.bin",
    ];
    let mut manifest: String = bad_paths
        .iter()
        .enumerate()
        .map(|(i, p)| serde_json(&[("url", &url), ("id", &i.to_string()), ("path", p)]))
        .collect();
    manifest.push_str(&serde_json(&[("url", &url), ("id", "victim"), ("path", "victim.txt")]));
    manifest.push_str(&serde_json(&[("url", &url), ("id", "ok"), ("path", "sub/ok.bin")]));
    let cfg = config(&out).on_exists(OnExists::Overwrite).build();
    let (summary, reports) = run(cfg, &manifest, Format::Jsonl).await;
    let reports = reports.by_id();
    assert_eq!(summary.done, 1, "{summary:?}");
    for (i, path) in bad_paths.iter().enumerate() {
        let r = &reports[&i.to_string()];
        assert_eq!(r.status, JobStatus::Failed, "{path}");
        assert!(
            r.error.as_deref().unwrap().contains("refused path"),
            "{path}: {:?}",
            r.error
        );
    }
    assert!(reports["victim"].error.as_deref().unwrap().contains("symlink"));
    assert_eq!(std::fs::read(outside.join("victim.txt")).unwrap(), b"keep me");
    assert!(out.join("sub/ok.bin").exists());
    assert_contained(tmp.path(), &before, "out");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "nothing new outside");
}

fn serde_json(fields: &[(&str, &str)]) -> String {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            format!(
                "\"{k}\":\"{}\"",
                v.replace('\\', "\\\\").replace('"', "\\\"").replace('\u{1}', "\\u0001")
            )
        })
        .collect();
    format!("{{{}}}\n", body.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_urls_map_inside_the_output_directory() {
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let before = snapshot(tmp.path());
    let base = server.base();
    let manifest =
        format!("{base}/f/%2e%2e%2f%2e%2e%2fescape?size=10\n{base}/f/..%5c..%5cwin?size=10\n{base}/f/a%00b?size=10\n");
    for layout in [Layout::Flat, Layout::Mirror] {
        let (summary, _) = run(config(&out).layout(layout).build(), &manifest, Format::Plain).await;
        assert_eq!(summary.failed_total(), 0, "{summary:?}");
    }
    assert_contained(tmp.path(), &before, "out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_and_cookies_never_follow_a_redirect_to_another_origin() {
    let origin = FaultServer::start().await;
    let other = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut creds = Credentials::default();
    // Named with its scheme and port: plain http is the user's explicit choice.
    creds.set(&origin.base(), Auth::Bearer("s3cret-token".into()));
    creds
        .add_cookies_txt("127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tc00kie\n")
        .unwrap();
    let target = other.url("moved.bin", 100, "");
    let via = format!("{}/redirect?to={}", origin.base(), encode(&target));
    // The same credentials reach the origin itself (proving they are sent at all) ...
    let direct = origin.url("direct.bin", 100, "");
    let (summary, reports) = run(
        config(&tmp.path().join("out")).credentials(creds).build(),
        &format!("{via}\n{direct}\n"),
        Format::Plain,
    )
    .await;
    assert_eq!(summary.done, 2, "{summary:?}");
    let seen_origin = origin.headers_seen();
    assert!(
        seen_origin
            .iter()
            .all(|(_, h)| h.get("authorization").is_some_and(|v| v == "Bearer s3cret-token"))
    );
    assert!(
        seen_origin
            .iter()
            .all(|(_, h)| h.get("cookie").is_some_and(|v| v == "session=c00kie"))
    );
    // ... but not the other origin the redirect led to (another port is another origin).
    let seen_other = other.headers_seen();
    assert_eq!(seen_other.len(), 1);
    assert!(
        seen_other[0].1.get("authorization").is_none(),
        "Authorization leaked across origins"
    );
    assert!(seen_other[0].1.get("cookie").is_none(), "Cookie leaked across origins");
    // Bytes are stored as served: haul asks for no compression.
    assert!(
        seen_origin
            .iter()
            .all(|(_, h)| h.get("accept-encoding").is_some_and(|v| v == "identity"))
    );
    assert!(reports.by_id().values().all(|r| r.status == JobStatus::Done));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_credentials_are_redacted_and_dropped_across_origins() {
    let origin = FaultServer::start().await;
    let other = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let addr = origin.base().trim_start_matches("http://").to_owned();
    let target = other.url("t.bin", 10, "");
    let url = format!("http://user:pa55word@{addr}/redirect?to={}&token=abc", encode(&target));
    let (summary, reports) = run(
        config(&tmp.path().join("out")).build(),
        &format!("{url}\n"),
        Format::Plain,
    )
    .await;
    assert_eq!(summary.done, 1);
    let seen = origin.headers_seen();
    assert!(
        seen[0]
            .1
            .get("authorization")
            .is_some_and(|v| v.to_str().unwrap().starts_with("Basic "))
    );
    assert!(other.headers_seen()[0].1.get("authorization").is_none());
    let shown = &reports.0.lock().unwrap()[0].url;
    assert!(
        !shown.contains("pa55word") && !shown.contains("token=abc"),
        "secrets in the report: {shown}"
    );
    assert!(shown.contains("user:***@") && shown.contains("token=***"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_limits_loops_and_schemes() {
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let base = server.base();
    let self_loop = format!("{base}/loop");
    let manifest = format!(
        "{base}/hop/3\n{base}/hop/11\n{self_loop}\n{base}/redirect?to={}\n",
        encode("ftp://127.0.0.1/x")
    );
    let cfg = config(&tmp.path().join("out")).layout(Layout::Mirror).build();
    let (summary, reports) = run(cfg, &manifest, Format::Plain).await;
    let reports = reports.by_id();
    assert_eq!(summary.done, 1, "{summary:?}");
    assert_eq!(reports[&format!("{base}/hop/3")].status, JobStatus::Done);
    let error = |id: &str| reports[id].error.clone().unwrap();
    assert!(
        error(&format!("{base}/hop/11")).contains("more than 10 redirects"),
        "{}",
        error(&format!("{base}/hop/11"))
    );
    assert!(error(&self_loop).contains("redirect loop"), "{}", error(&self_loop));
    let ftp = format!("{base}/redirect?to={}", encode("ftp://127.0.0.1/x"));
    assert!(error(&ftp).contains("only http and https"), "{}", error(&ftp));
    // Refused redirects are permanent: one attempt each, no retry storm.
    assert_eq!(reports[&format!("{base}/hop/11")].attempts, 1);
    let hops_made = server.hits("/hop/11");
    assert_eq!(hops_made, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_disposition_names_are_confined_and_opt_in() {
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let before = snapshot(tmp.path());
    let evil = server.url(
        "a",
        10,
        &format!("disposition={}", encode("attachment; filename=\"../../evil.txt\"")),
    );
    // A launcher is never a server-chosen name: the URL's name stays.
    let launcher = server.url(
        "e",
        10,
        &format!("disposition={}", encode("attachment; filename=\"photo.jpg.desktop\"")),
    );
    let utf8 = server.url(
        "b",
        10,
        &format!(
            "disposition={}",
            encode("attachment; filename=fallback.bin; filename*=UTF-8''%E2%82%AC.bin")
        ),
    );
    let twin1 = server.url(
        "c",
        10,
        &format!("disposition={}", encode("attachment; filename=same.bin")),
    );
    let twin2 = server.url(
        "d",
        10,
        &format!("disposition={}", encode("attachment; filename=same.bin")),
    );
    let manifest = format!("{evil}\n{utf8}\n{twin1}\n{twin2}\n{launcher}\n");
    let (summary, _) = run(
        config(&out).concurrency(1).content_disposition(true).build(),
        &manifest,
        Format::Plain,
    )
    .await;
    assert_eq!((summary.done, summary.failed_total()), (4, 1), "{summary:?}");
    assert!(out.join("evil.txt").exists());
    assert!(out.join(flat_name(&launcher)).exists() && !out.join("photo.jpg.desktop").exists());
    assert!(out.join("€.bin").exists(), "filename* wins over filename");
    assert!(out.join("same.bin").exists());
    assert_eq!(summary.failed.keys().next().unwrap().0, "path conflict");
    assert_contained(tmp.path(), &before, "out");
    // Off by default: the URL names the file.
    let plain = tmp.path().join("plain");
    let (summary, _) = run(config(&plain).build(), &format!("{evil}\n"), Format::Plain).await;
    assert_eq!(summary.done, 1);
    assert!(plain.join(flat_name(&evil)).exists() && !plain.join("evil.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_host_and_manifest_secrets_stay_with_their_origin() {
    let origin = FaultServer::start().await;
    let other = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let target = other.url("moved.bin", 100, "");
    let via = format!("{}/redirect?to={}", origin.base(), encode(&target));
    let manifest = format!(
        "{{\"url\":\"{via}\",\"headers\":{{\"Authorization\":\"Basic bWFuaWZlc3Q=\",\"Referer\":\"https://posts.example/1\"}}}}\n"
    );
    let cfg = config(&tmp.path().join("out"))
        .host_headers(vec![("127.0.0.1".into(), "X-Api-Key".into(), "k3y".into())])
        .headers(vec![("X-Everywhere".into(), "yes".into())])
        .build();
    let (summary, _) = run(cfg, &manifest, Format::Jsonl).await;
    assert_eq!(summary.done, 1, "{summary:?}");
    let first = &origin.headers_seen()[0].1;
    assert_eq!(first.get("x-api-key").unwrap(), "k3y");
    assert_eq!(first.get("authorization").unwrap(), "Basic bWFuaWZlc3Q=");
    let moved = &other.headers_seen()[0].1;
    assert!(
        moved.get("x-api-key").is_none(),
        "a per-host header followed the redirect"
    );
    assert!(
        moved.get("authorization").is_none(),
        "the manifest's Authorization followed the redirect"
    );
    assert_eq!(
        moved.get("referer").unwrap(),
        "https://posts.example/1",
        "other job headers do follow"
    );
    assert_eq!(moved.get("x-everywhere").unwrap(), "yes", "-H headers go everywhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_heads_are_refused() {
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let manifest = format!(
        "{}\n{}\n",
        server.url("many.bin", 10, "filler_headers=150"),
        server.url("few.bin", 10, "filler_headers=20")
    );
    let (summary, _) = run(config(&out).retries(0).build(), &manifest, Format::Plain).await;
    assert_eq!((summary.done, summary.failed_total()), (1, 1), "{summary:?}");
    assert!(out.join("few.bin").exists() && !out.join("many.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_host_receives_credentials_after_a_redirect() {
    let origin = FaultServer::start().await;
    let cdn = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut creds = Credentials::default();
    creds.set(&origin.base(), Auth::Bearer("tok".into()));
    // The CDN is reached as "localhost": another host, trusted explicitly.
    let target = cdn.url("c.bin", 10, "").replace("127.0.0.1", "localhost");
    let via = format!("{}/redirect?to={}", origin.base(), encode(&target));
    let cfg = config(&tmp.path().join("out"))
        .credentials(creds)
        .trusted_hosts(vec!["localhost".into()])
        .build();
    let (summary, _) = run(cfg, &format!("{via}\n"), Format::Plain).await;
    assert_eq!(summary.done, 1, "{summary:?}");
    assert_eq!(cdn.headers_seen()[0].1.get("authorization").unwrap(), "Bearer tok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_proxy_carries_the_requests() {
    let server = FaultServer::start().await;
    let socks = haul_test::Socks5::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let manifest = format!(
        "{}\n{}\n",
        server.url("s1.bin", 1000, ""),
        server.url("s2.bin", 2000, "")
    );
    let cfg = config(&out).concurrency(1).per_host(1).proxy(Some(socks.url())).build();
    let (summary, _) = run(cfg, &manifest, Format::Plain).await;
    assert_eq!(summary.done, 2, "{summary:?}");
    assert!(socks.relayed() >= 1, "the requests went through the SOCKS5 proxy");
    assert_eq!(
        std::fs::read(out.join("s2.bin")).unwrap(),
        haul_test::body_for("s2.bin", 2000)
    );
}
