//! Bucket output (`-o s3://BUCKET/PREFIX`) against a real S3-compatible server (moto, started
//! here and stopped by its PID): what lands in the bucket, staging keys, create-only promotes,
//! reruns, `haul gc`, and a fleet of workers writing to one bucket.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use haul_test::{FaultServer, Postgres, S3Server, body_for, sha256_hex};

use super::{haul, path, run_command, runtime, stderr};

const BUCKET: &str = "haul-test";

/// haul with the bucket's endpoint and credentials in its environment.
fn with_s3(s3: &S3Server, args: &[&str]) -> Command {
    let mut command = haul();
    command
        .env("AWS_ACCESS_KEY_ID", "haul-test-key")
        .env("AWS_SECRET_ACCESS_KEY", "haul-test-secret")
        .env("AWS_REGION", "us-east-1")
        .env("HAUL_S3_ENDPOINT", s3.endpoint())
        .args(args);
    command
}

fn run_s3(s3: &S3Server, args: &[&str]) -> Output {
    run_command(with_s3(s3, args), None)
}

/// `(url, name, sha256, size)` of files from the fault server.
fn files(server: &FaultServer, sizes: &[u64]) -> Vec<(String, String, String, u64)> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let name = format!("f{i:02}.bin");
            let url = server.url(&name, size, "");
            (url, name.clone(), sha256_hex(&body_for(&name, size)), size)
        })
        .collect()
}

fn jsonl(dir: &Path, files: &[(String, String, String, u64)]) -> std::path::PathBuf {
    let lines: Vec<String> = files
        .iter()
        .map(|(url, name, sha, _)| format!(r#"{{"url":"{url}","path":"{name}","sha256":"{sha}"}}"#))
        .collect();
    let file = dir.join("list.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    file
}

/// Every file is in the bucket under `prefix` with its sha256, and nothing else is.
fn assert_bucket(s3: &S3Server, prefix: &str, files: &[(String, String, String, u64)]) {
    let listed = s3.list(BUCKET, prefix);
    let mut want: Vec<(String, u64)> = files.iter().map(|(_, n, _, s)| (format!("{prefix}/{n}"), *s)).collect();
    want.sort();
    assert_eq!(listed, want, "the bucket holds exactly the files (no staging key)");
    for (_, name, sha, _) in files {
        let body = s3.get(BUCKET, &format!("{prefix}/{name}")).expect("object");
        assert_eq!(&sha256_hex(&body), sha, "{name}");
    }
    assert_eq!(s3.open_uploads(BUCKET), 0, "no multipart upload left open");
}

/// `haul get -i LIST -o s3://haul-test/PREFIX --stage-dir STAGE` followed by `extra`.
fn get_to(s3: &S3Server, list: &Path, prefix: &str, stage: &Path, extra: &[&str]) -> Output {
    let output = format!("s3://{BUCKET}/{prefix}");
    let mut args = vec!["get", "-i", path(list), "-o", &output, "--stage-dir", path(stage)];
    args.extend_from_slice(extra);
    run_s3(s3, &args)
}

fn puts(s3: &S3Server) -> usize {
    s3.requests().iter().filter(|r| r.starts_with("PUT ")).count()
}

/// The fault server (with its runtime, first: dropped last) and an S3 server with the bucket.
fn origin_and_bucket() -> (tokio::runtime::Runtime, FaultServer, S3Server) {
    let rt = runtime();
    let server = rt.block_on(async { FaultServer::start().await });
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    (rt, server, s3)
}

#[test]
fn get_to_a_bucket_uploads_verified_objects_and_a_rerun_uploads_nothing() {
    let (_rt, server, s3) = origin_and_bucket();
    let dir = tempfile::tempdir().unwrap();
    // Small files in one create-only PUT; 20 MB and 17 MiB + 1 through a staging key.
    let files = files(
        &server,
        &[0, 1, 1000, 65_536, 300_000, 20_000_000, 17 * 1024 * 1024 + 1],
    );
    let list = jsonl(dir.path(), &files);
    let stage = dir.path().join("stage");
    let args = [
        "get",
        "-i",
        path(&list),
        "-o",
        "s3://haul-test/photos/2026",
        "--stage-dir",
        path(&stage),
        "--progress",
        "none",
        "--allow-empty",
    ];
    let first = run_s3(&s3, &args);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_bucket(&s3, "photos/2026", &files);
    assert!(
        s3.list(BUCKET, "photos/2026/.haul-staging").is_empty(),
        "staging keys are removed"
    );
    let parts: Vec<_> = std::fs::read_dir(stage.join(".haul/parts")).unwrap().collect();
    assert!(parts.is_empty(), "no part file stays in the staging directory");
    for (_, name, _, _) in &files {
        assert!(!stage.join(name).exists(), "{name} is not left on local disk");
    }

    // `haul verify` on a staging directory would find every file missing: refused, nothing marked.
    let verify = run_s3(&s3, &["verify", path(&stage)]);
    assert_eq!(verify.status.code(), Some(3), "{}", stderr(&verify));
    assert!(
        stderr(&verify).contains("stages uploads to s3://haul-test/photos/2026"),
        "{}",
        stderr(&verify)
    );

    // A rerun: the archive in the staging directory skips every job.
    let before = (puts(&s3), server.total_hits());
    let again = run_s3(&s3, &args);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(
        (puts(&s3), server.total_hits()),
        before,
        "a rerun uploads and fetches nothing"
    );

    // Even with the archive lost (a new staging directory): each object's sha256 matches the
    // manifest (the recorded one, or for a promoted large object, read back from the bucket),
    // so it is adopted without a download or an upload.
    let fresh = dir.path().join("stage2");
    let mut lost = args;
    lost[6] = path(&fresh);
    let third = run_s3(&s3, &lost);
    assert_eq!(third.status.code(), Some(0), "{}", stderr(&third));
    assert_eq!(
        (puts(&s3), server.total_hits()),
        before,
        "objects are adopted, not uploaded again"
    );
    assert_bucket(&s3, "photos/2026", &files);
}

/// A file larger than `--s3-copy-max` (S3's limit for one copy: 5 GiB) goes straight to its key
/// as a multipart upload, with haul's digest as metadata; one below it through a staging key
/// and a copy, without. A rerun that lost its archive adopts both, reading back only the
/// copied one.
#[test]
fn a_file_too_large_to_copy_goes_straight_to_its_key() {
    let (_rt, server, s3) = origin_and_bucket();
    let dir = tempfile::tempdir().unwrap();
    let files = files(&server, &[17 * 1024 * 1024, 20_000_000]);
    let list = jsonl(dir.path(), &files);
    let limit = ["--progress", "none", "--s3-copy-max", "18M"];
    let first = get_to(&s3, &list, "big", &dir.path().join("stage"), &limit);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_bucket(&s3, "big", &files);
    let (copied, straight) = (&files[0], &files[1]);
    let staging: std::collections::BTreeSet<String> = s3
        .requests()
        .iter()
        .filter(|r| r.contains("/.haul-staging/"))
        .filter_map(|r| r.split([' ', '?']).nth(1).map(str::to_owned))
        .collect();
    assert_eq!(staging.len(), 1, "only 17 MiB went through a staging key: {staging:?}");
    let meta = |name: &str| s3.object_header(BUCKET, &format!("big/{name}"), "x-amz-meta-haul-sha256");
    assert_eq!(
        meta(&straight.1).as_ref(),
        Some(&straight.2),
        "the straight upload carries the digest"
    );
    assert_eq!(meta(&copied.1), None, "a copy carries none");

    let reads = |name: &str| {
        s3.requests()
            .iter()
            .filter(|r| r.starts_with(&format!("GET /{BUCKET}/big/{name}")))
            .count()
    };
    let before = (puts(&s3), server.total_hits(), reads(&straight.1), reads(&copied.1));
    let again = get_to(&s3, &list, "big", &dir.path().join("stage2"), &limit);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    let after = (puts(&s3), server.total_hits(), reads(&straight.1), reads(&copied.1));
    assert_eq!(
        (after.0, after.1, after.2),
        (before.0, before.1, before.2),
        "nothing uploaded or fetched; the straight object adopted from its metadata"
    );
    assert_eq!(after.3, before.3 + 1, "the copied object is read back once to compare");
    assert_bucket(&s3, "big", &files);
}

/// The server's request lines without moto's colours.
fn plain_requests(s3: &S3Server) -> Vec<String> {
    s3.requests()
        .iter()
        .map(|r| {
            let mut plain = String::new();
            let mut rest = r.as_str();
            while let Some(at) = rest.find('\u{1b}') {
                plain.push_str(&rest[..at]);
                rest = rest[at..].split_once('m').map_or("", |(_, after)| after);
            }
            plain + rest
        })
        .collect()
}

/// The multipart uploads to staging keys haul started in the bucket, and of those the ones it
/// aborted (by upload id). (A create-only copy is a multipart upload to the final key.)
fn staging_uploads(s3: &S3Server) -> (usize, Vec<String>) {
    let requests = plain_requests(s3);
    let staging = |r: &&String| r.contains("/.haul-staging/");
    let started = requests
        .iter()
        .filter(staging)
        .filter(|r| r.starts_with("POST ") && r.contains("?uploads"))
        .count();
    let aborted = requests
        .iter()
        .filter(staging)
        .filter(|r| r.starts_with("DELETE "))
        .filter_map(|r| r.split("uploadId=").nth(1))
        .map(|id| id.split([' ', '&']).next().unwrap_or_default().to_owned())
        .collect();
    (started, aborted)
}

/// Parts uploaded under the upload `id`.
fn parts_of(s3: &S3Server, id: &str) -> usize {
    plain_requests(s3)
        .iter()
        .filter(|r| r.starts_with("PUT ") && r.contains("partNumber=") && r.contains(&format!("uploadId={id}")))
        .count()
}

/// Gets one file, `NAME.bin` of `size` bytes from the fault server with `faults`, to the bucket
/// under `NAME`, with `args`: the run, checked to succeed and to leave exactly the file there.
fn get_one(
    server: &FaultServer,
    s3: &S3Server,
    dir: &Path,
    name: &str,
    size: u64,
    faults: &str,
    args: &[&str],
) -> Output {
    let file_name = format!("{name}.bin");
    let url = server.url(&file_name, size, faults);
    let file = (url, file_name.clone(), sha256_hex(&body_for(&file_name, size)), size);
    let list = jsonl(dir, std::slice::from_ref(&file));
    let run = get_to(s3, &list, name, &dir.join(format!("stage-{name}")), args);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert_bucket(s3, name, &[file]);
    run
}

/// A large file's upload runs while its body arrives: a body cut off after 20 MB has already
/// put parts in the bucket. Cut off, that upload is aborted (the resume goes up from the part
/// file), and the object is the whole file, with no upload left open.
#[test]
fn a_large_file_uploads_while_it_downloads_and_a_cut_body_aborts_that_upload() {
    let (_rt, server, s3) = origin_and_bucket();
    let dir = tempfile::tempdir().unwrap();
    // 20 MB/s: a second for the first 20 MB, ample for a part to go up meanwhile.
    let faults = "rate=20000000&reset=20000000&times=1";
    get_one(
        &server,
        &s3,
        dir.path(),
        "cut",
        30_000_000,
        faults,
        &["--progress", "none", "--split", "1"],
    );
    assert_eq!(server.hits("/f/cut.bin"), 2, "cut once, resumed once");
    let (started, aborted) = staging_uploads(&s3);
    assert_eq!((started, aborted.len()), (2, 1), "{:?}", s3.requests());
    assert!(
        parts_of(&s3, &aborted[0]) >= 1,
        "the cut body's upload had parts before its body ended: {:?}",
        s3.requests()
    );
}

/// A segmented transfer's cut connection, its range asked again, does not restart the file's
/// upload: one upload, none aborted, holds the file.
#[test]
fn a_segmented_transfer_carries_its_upload_on_after_a_cut() {
    let (_rt, server, s3) = origin_and_bucket();
    let dir = tempfile::tempdir().unwrap();
    let faults = "reset=20000000&times=1";
    get_one(
        &server,
        &s3,
        dir.path(),
        "seg",
        40_000_000,
        faults,
        &["--progress", "none", "--split", "4"],
    );
    assert!(server.hits("/f/seg.bin") >= 2, "the cut range was asked again");
    let (started, aborted) = staging_uploads(&s3);
    assert_eq!((started, aborted.len()), (1, 0), "{:?}", s3.requests());
}

/// The bytes a run's streamed upload sent while its file downloaded (its `-vv` log).
fn streamed(log: &str) -> u64 {
    log.lines()
        .find(|l| l.contains("upload streamed"))
        .and_then(|l| l.split("streamed=").nth(1))
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no streamed upload logged: {log}"))
}

/// A file split across connections (each throttled, so the transfer splits) uploads its bytes
/// from 0 while the connections fill them in.
#[test]
fn a_split_file_uploads_what_is_written_from_its_start_while_it_downloads() {
    let (_rt, server, s3) = origin_and_bucket();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--progress", "none", "--split", "4", "-vv"];
    let run = get_one(&server, &s3, dir.path(), "split", 40_000_000, "rate=10000000", &args);
    assert!(server.hits("/f/split.bin") >= 2, "the file was split");
    let streamed = streamed(&stderr(&run));
    assert!(streamed >= 8 << 20, "streamed {streamed} bytes while downloading");
}

/// A segmented transfer interrupted (Ctrl-C) aborts its upload; resumed, its upload starts
/// with the bytes the first run wrote, read from the part file, while the rest downloads.
#[test]
fn a_resumed_split_file_uploads_what_earlier_runs_wrote_while_the_rest_downloads() {
    let (_rt, server, s3) = origin_and_bucket();
    let dir = tempfile::tempdir().unwrap();
    let size = 40_000_000;
    // Every request at 5 MB/s: the transfer splits, and is far from done when the run is
    // interrupted.
    let url = server.url("resumed.bin", size, "rate=5000000");
    let file = (
        url,
        "resumed.bin".to_owned(),
        sha256_hex(&body_for("resumed.bin", size)),
        size,
    );
    let list = jsonl(dir.path(), std::slice::from_ref(&file));
    let stage = dir.path().join("stage");
    let output = format!("s3://{BUCKET}/resumed");
    let args = [
        "get",
        "-i",
        path(&list),
        "-o",
        &output,
        "--stage-dir",
        path(&stage),
        "--split",
        "4",
        "--progress",
        "none",
        "-vv",
    ];
    let child = with_s3(&s3, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start haul");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while server.hits("/f/resumed.bin") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the transfer did not split in 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // Split after 250 ms at 5 MB/s: more than a mebibyte of the first piece is written by now.
    std::thread::sleep(std::time::Duration::from_millis(400));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let first = child.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(130), "{}", stderr(&first));
    assert_eq!(s3.open_uploads(BUCKET), 0, "the interrupted upload was aborted");
    assert_eq!(s3.list(BUCKET, "resumed"), vec![], "no object yet");

    let again = run_s3(&s3, &args);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_bucket(&s3, "resumed", &[file]);
    let streamed = streamed(&stderr(&again));
    assert!(
        streamed >= 1 << 20,
        "streamed {streamed} bytes: the first run's from the part file"
    );
}

/// A streamed upload of a file that fails its checksum is aborted: nothing at the key, no
/// upload left open, the job failed.
#[test]
fn a_streamed_file_that_fails_its_checksum_leaves_nothing_in_the_bucket() {
    let (_rt, server, s3) = origin_and_bucket();
    let dir = tempfile::tempdir().unwrap();
    let size = 20_000_000;
    let url = server.url("bad.bin", size, "");
    let wrong = sha256_hex(b"another file");
    let list = jsonl(dir.path(), &[(url, "bad.bin".to_owned(), wrong, size)]);
    for split in ["1", "4"] {
        let prefix = format!("bad{split}");
        let run = get_to(
            &s3,
            &list,
            &prefix,
            &dir.path().join(format!("stage{split}")),
            &["--progress", "none", "--split", split, "--retries", "0"],
        );
        assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
        assert!(stderr(&run).contains("sha256 mismatch"), "{}", stderr(&run));
        assert_eq!(s3.list(BUCKET, &prefix), vec![], "no object, no staging key");
        assert_eq!(s3.open_uploads(BUCKET), 0, "no upload left open");
    }
    // Each run streamed (and aborted: no upload is open) its upload.
    assert!(staging_uploads(&s3).0 >= 2, "{:?}", s3.requests());
}

#[test]
fn an_object_in_the_way_is_replaced_or_refused_as_on_exists_says() {
    let (_rt, server, s3) = origin_and_bucket();
    let dir = tempfile::tempdir().unwrap();
    let files = files(&server, &[5000, 6000]);
    let list = jsonl(dir.path(), &files);
    s3.put(BUCKET, "out/f00.bin", b"an older version");
    s3.put(BUCKET, "out/f01.bin", b"an older version");

    let stage = dir.path().join("stage-fail");
    let refused = get_to(
        &s3,
        &list,
        "out",
        &stage,
        &["--on-exists", "fail", "--progress", "none"],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("destination exists: s3://haul-test/out/f00.bin"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(s3.get(BUCKET, "out/f00.bin").unwrap(), b"an older version");

    // The default (skip): an object that is not the manifest's file is replaced.
    let stage = dir.path().join("stage-skip");
    let replaced = get_to(&s3, &list, "out", &stage, &["--progress", "none"]);
    assert_eq!(replaced.status.code(), Some(0), "{}", stderr(&replaced));
    assert_bucket(&s3, "out", &files);

    let rename = get_to(&s3, &list, "out", &stage, &["--on-exists", "rename"]);
    assert_eq!(rename.status.code(), Some(3), "{}", stderr(&rename));
    assert!(stderr(&rename).contains("--on-exists rename is not supported with a bucket"));
}

/// Starts `haul get` of `list` to the bucket under `prefix` (staging in `stage`), waits until
/// its upload has put a part in the bucket while the body still arrives, and kills it (`kill
/// -9`): the upload is left open.
fn kill_mid_upload(s3: &S3Server, list: &Path, prefix: &str, stage: &Path) {
    let output = format!("s3://{BUCKET}/{prefix}");
    let mut child = with_s3(
        s3,
        &[
            "get",
            "-i",
            path(list),
            "-o",
            &output,
            "--stage-dir",
            path(stage),
            "--split",
            "1",
            "--progress",
            "none",
        ],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start haul");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let part = format!("/{prefix}/.haul-staging/");
    while !plain_requests(s3)
        .iter()
        .any(|r| r.starts_with("PUT ") && r.contains(&part) && r.contains("partNumber="))
    {
        assert!(std::time::Instant::now() < deadline, "no part uploaded in 30 s");
        assert!(
            child.try_wait().unwrap().is_none(),
            "haul ended before its upload began"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// A run killed mid-download leaves its streamed upload open (S3 would keep it, invisible and
/// billed): `haul gc` aborts the uploads its staging directory records for runs that stopped,
/// and so does the next run on that directory, which then finishes the file.
#[test]
fn uploads_a_killed_run_left_open_are_aborted_by_gc_and_by_the_next_run() {
    let (_rt, server, s3) = origin_and_bucket();
    let dir = tempfile::tempdir().unwrap();
    // 5 MB/s on the first request only: killed well before its end; the next run is fast.
    let files: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            let name = format!("{name}.bin");
            let size = 30_000_000;
            let url = server.url(&name, size, "rate=5000000&times=1");
            (url, name.clone(), sha256_hex(&body_for(&name, size)), size)
        })
        .collect();
    let (stage_a, stage_b) = (dir.path().join("stage-a"), dir.path().join("stage-b"));
    for sub in ["a", "b"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
    }
    let list_a = jsonl(&dir.path().join("a"), &files[..1]);
    let list_b = jsonl(&dir.path().join("b"), &files[1..]);

    kill_mid_upload(&s3, &list_a, "crash-a", &stage_a);
    assert_eq!(s3.open_uploads(BUCKET), 1, "the killed run's upload is open");
    let gc = run_s3(
        &s3,
        &["gc", "-o", "s3://haul-test/crash-a", "--stage-dir", path(&stage_a)],
    );
    assert_eq!(gc.status.code(), Some(0), "{}", stderr(&gc));
    assert!(
        stderr(&gc).contains("aborted 1 unfinished uploads recorded in"),
        "{}",
        stderr(&gc)
    );
    assert_eq!(s3.open_uploads(BUCKET), 0, "gc aborted it");

    kill_mid_upload(&s3, &list_b, "crash-b", &stage_b);
    assert_eq!(s3.open_uploads(BUCKET), 1, "the killed run's upload is open");
    let again = get_to(&s3, &list_b, "crash-b", &stage_b, &["--progress", "none"]);
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(
        stderr(&again).contains("aborted 1 unfinished uploads left by a stopped run"),
        "{}",
        stderr(&again)
    );
    assert_bucket(&s3, "crash-b", &files[1..]);
}

#[test]
fn gc_lists_and_removes_only_old_staging_keys() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    s3.put(BUCKET, "out/.haul-staging/w1-abc.part", &vec![7; 3000]);
    s3.put(BUCKET, "out/.haul-staging/w2-def.part", b"x");
    s3.put(BUCKET, "out/kept.bin", b"a finished file");
    s3.put(BUCKET, "other/.haul-staging/elsewhere.part", b"another prefix's");

    // Young keys (an upload may be finishing them) are left alone by default.
    let young = run_s3(&s3, &["gc", "-o", "s3://haul-test/out"]);
    assert_eq!(young.status.code(), Some(0), "{}", stderr(&young));
    assert!(String::from_utf8_lossy(&young.stdout).is_empty());
    assert_eq!(s3.list(BUCKET, "out/.haul-staging").len(), 2);

    let listed = run_s3(
        &s3,
        &["gc", "-o", "s3://haul-test/out", "--older-than", "0s", "--dry-run"],
    );
    assert_eq!(listed.status.code(), Some(0), "{}", stderr(&listed));
    let out = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        out.contains("s3://haul-test/out/.haul-staging/w1-abc.part\t3000\t"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(
        s3.list(BUCKET, "out/.haul-staging").len(),
        2,
        "--dry-run removes nothing"
    );

    let removed = run_s3(&s3, &["gc", "-o", "s3://haul-test/out", "--older-than", "0s"]);
    assert_eq!(removed.status.code(), Some(0), "{}", stderr(&removed));
    assert!(
        stderr(&removed).contains("removed 2 staging keys (3001 bytes)"),
        "{}",
        stderr(&removed)
    );
    assert!(s3.list(BUCKET, "out/.haul-staging").is_empty());
    assert_eq!(s3.get(BUCKET, "out/kept.bin").unwrap(), b"a finished file");
    assert_eq!(s3.list(BUCKET, "other").len(), 1, "another prefix is not touched");

    let bad = run_s3(&s3, &["gc", "-o", "/tmp/not-a-bucket"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(
        stderr(&bad).contains("not an s3://BUCKET/PREFIX URL"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn workers_of_a_queue_fill_one_bucket_each_file_once() {
    let (_rt, server, s3) = origin_and_bucket();
    let pg = Postgres::start();
    let queue = pg.database("haul");
    let dir = tempfile::tempdir().unwrap();
    let sizes: Vec<u64> = (0..60).map(|i| 2000 + i * 37).chain([18_000_000]).collect();
    let files = files(&server, &sizes);
    let list = jsonl(dir.path(), &files);
    let enqueue = run_command(
        {
            let mut c = haul();
            c.env("HAUL_QUEUE", &queue).args(["enqueue", "-i", path(&list)]);
            c
        },
        None,
    );
    assert_eq!(enqueue.status.code(), Some(0), "{}", stderr(&enqueue));
    let workers: Vec<_> = (0..2)
        .map(|i| {
            let stage = dir.path().join(format!("stage{i}"));
            with_s3(
                &s3,
                &[
                    "work",
                    "-o",
                    "s3://haul-test/fleet",
                    "--stage-dir",
                    path(&stage),
                    "--progress",
                    "none",
                    "-j",
                    "8",
                ],
            )
            .env("HAUL_QUEUE", &queue)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a worker")
        })
        .collect();
    for worker in workers {
        let output = worker.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    assert_bucket(&s3, "fleet", &files);
    for (_, name, _, _) in &files {
        let url_path = format!("/f/{name}");
        assert_eq!(server.hits(&url_path), 1, "{name} fetched once");
    }
    let uploads = s3
        .requests()
        .iter()
        .filter(|r| r.starts_with("PUT /haul-test/fleet/f") && !r.contains('?'))
        .count();
    assert_eq!(uploads, files.len() - 1, "each small file uploaded once");
    let status = run_command(
        {
            let mut c = haul();
            c.args(["status", "--queue", &queue, "--json"]);
            c
        },
        None,
    );
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status --json");
    let done = json["states"]
        .as_array()
        .expect("states")
        .iter()
        .find(|s| s["state"] == "done")
        .map(|s| s["jobs"].clone());
    assert_eq!(done, Some(serde_json::json!(files.len())), "{json}");
}
