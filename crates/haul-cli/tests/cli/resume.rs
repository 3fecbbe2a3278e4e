//! Issue 8, classes 1 to 4: every row of the transfer state table (`fetch/range.rs`) against a
//! scripted server that lies, through the built binary run twice (interrupted, then resumed).
//! Each test checks the final bytes by sha256 against the true content, the archive row against
//! the file, and the requests the server received.

use std::path::{Path, PathBuf};
use std::process::Output;

use haul_test::{Reply, Scripted, body_for, sha256_hex};

use super::{get_args, manifest, path, run, stderr};

/// The file's true length.
const N: usize = 200_000;
/// Where the first run is cut.
const HALF: usize = N / 2;
const LM: &str = "Wed, 01 Jan 2025 00:00:00 GMT";

fn v1() -> Vec<u8> {
    body_for("r.bin", N as u64)
}

/// The first answer: the whole file announced, ETag "v1" (or Last-Modified only), cut halfway.
fn first(etag: bool) -> Reply {
    let validator = if etag {
        "ETag: \"v1\"".to_owned()
    } else {
        format!("Last-Modified: {LM}")
    };
    Reply::new(&format!("HTTP/1.1 200 OK\nContent-Length: {N}\n{validator}"), v1()).cut(HALF)
}

/// A correct whole-file answer.
fn whole() -> Reply {
    Reply::new(&format!("HTTP/1.1 200 OK\nContent-Length: {N}\nETag: \"v1\""), v1())
}

/// A 206 from `start` with the given extra header lines, body from `start` of version 1.
fn partial(start: usize, range: &str, headers: &str) -> Reply {
    let body = v1()[start.min(N)..].to_vec();
    let head = format!(
        "HTTP/1.1 206 Partial Content\nContent-Range: {range}\nContent-Length: {}\n{headers}",
        body.len()
    );
    Reply::new(head.trim_end(), body)
}

struct Resumed {
    _tmp: tempfile::TempDir,
    out: PathBuf,
    server: Scripted,
    second: Output,
}

/// Runs haul once (`--retries 0`: the cut leaves a part), checks the part, then again.
fn interrupted_then_resumed(replies: Vec<Reply>, second_args: &[&str]) -> Resumed {
    let server = Scripted::start(replies);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let list = manifest(tmp.path(), &[format!("{}/r.bin", server.base())]);
    let first = run(&get_args(&list, &out, &["--retries", "0", "--progress", "none"]));
    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
    let part = haul::store::part_path(&out, "r.bin");
    assert_eq!(
        std::fs::metadata(&part).map(|m| m.len()).ok(),
        Some(HALF as u64),
        "a resumable part"
    );
    let mut args = get_args(
        &list,
        &out,
        &["--retry-wait", "10ms", "--progress", "none", "--digest", "blake3"],
    );
    args.extend_from_slice(second_args);
    let second = run(&args);
    Resumed {
        _tmp: tmp,
        out,
        server,
        second,
    }
}

fn archive_row(out: &Path, id: &str) -> haul::archive::Row {
    haul::archive::ArchiveReader::open(&out.join(".haul/archive.sqlite"))
        .unwrap()
        .lookup(id)
        .unwrap()
        .expect("an archive row")
}

/// The run ended done with exactly `content`, recorded with its digest (BLAKE3 by default).
fn assert_done_with(r: &Resumed, content: &[u8]) {
    assert_eq!(r.second.status.code(), Some(0), "{}", stderr(&r.second));
    let file = std::fs::read(r.out.join("r.bin")).unwrap();
    assert_eq!(sha256_hex(&file), sha256_hex(content), "no spliced bytes");
    let row = archive_row(&r.out, &format!("{}/r.bin", r.server.base()));
    assert_eq!(row.status, haul::archive::RowStatus::Done);
    assert_eq!(
        row.blake3.as_deref(),
        Some(haul_test::blake3_hex(&file).as_str()),
        "the row matches the file"
    );
    assert!(!haul::store::part_path(&r.out, "r.bin").exists());
}

#[test]
fn resume_answers_that_contradict_the_request_restart_from_zero() {
    let h = HALF;
    let rows: Vec<(&str, Reply, bool)> = vec![
        (
            "200 carrying a slice",
            Reply::new(
                &format!(
                    "HTTP/1.1 200 OK\nContent-Range: bytes {h}-{}/{N}\nContent-Length: {}\nETag: \"v1\"",
                    N - 1,
                    N - h
                ),
                v1()[h..].to_vec(),
            ),
            true,
        ),
        (
            "206 with another total",
            partial(h, &format!("bytes {h}-{}/{}", N - 1, N + 50), "ETag: \"v1\""),
            true,
        ),
        (
            "206 without a validator",
            partial(h, &format!("bytes {h}-{}/{N}", N - 1), ""),
            true,
        ),
        (
            "206 starting elsewhere",
            partial(h + 1, &format!("bytes {}-{}/{N}", h + 1, N - 1), "ETag: \"v1\""),
            true,
        ),
        (
            "206 with bytes */N",
            partial(N, &format!("bytes */{N}"), "ETag: \"v1\""),
            true,
        ),
        (
            "206 with a changed ETag",
            partial(h, &format!("bytes {h}-{}/{N}", N - 1), "ETag: \"v2\""),
            true,
        ),
        (
            "416 without Content-Range",
            Reply::new("HTTP/1.1 416 Range Not Satisfiable\nContent-Length: 0", ""),
            true,
        ),
        (
            "416 naming another length",
            Reply::new(
                &format!(
                    "HTTP/1.1 416 Range Not Satisfiable\nContent-Range: bytes */{}\nContent-Length: 0",
                    N + 9
                ),
                "",
            ),
            true,
        ),
        (
            "206 with a changed Last-Modified",
            partial(
                h,
                &format!("bytes {h}-{}/{N}", N - 1),
                "Last-Modified: Thu, 02 Jan 2025 00:00:00 GMT",
            ),
            false,
        ),
        (
            "206 without the Last-Modified",
            partial(h, &format!("bytes {h}-{}/{N}", N - 1), ""),
            false,
        ),
    ];
    for (name, lie, etag) in rows {
        let r = interrupted_then_resumed(vec![first(etag), lie, whole()], &[]);
        let seen = r.server.requests();
        assert_eq!(seen.len(), 3, "{name}: the lie is answered by one restart");
        assert_eq!(seen[1].header("range"), Some(format!("bytes={h}-").as_str()), "{name}");
        let validator = if etag { "\"v1\"".to_owned() } else { LM.to_owned() };
        assert_eq!(seen[1].header("if-range"), Some(validator.as_str()), "{name}");
        assert_eq!(
            seen[2].header("range"),
            None,
            "{name}: the restart asks for the whole file"
        );
        assert_done_with(&r, &v1());
    }
}

#[test]
fn a_consistent_206_continues_the_part() {
    for (etag, validator) in [
        (true, "ETag: \"v1\"".to_owned()),
        (false, format!("Last-Modified: {LM}")),
    ] {
        let ok = partial(HALF, &format!("bytes {HALF}-{}/{N}", N - 1), &validator);
        let r = interrupted_then_resumed(vec![first(etag), ok], &[]);
        assert_eq!(r.server.requests().len(), 2, "continued without a restart");
        assert_done_with(&r, &v1());
    }
}

#[test]
fn a_200_to_a_resume_is_a_new_representation() {
    let v2 = body_for("r-v2.bin", (N + 5_000) as u64);
    let new = Reply::new(
        &format!("HTTP/1.1 200 OK\nContent-Length: {}\nETag: \"v2\"", v2.len()),
        v2.clone(),
    );
    let r = interrupted_then_resumed(vec![first(true), new], &[]);
    assert_eq!(r.server.requests().len(), 2);
    assert_done_with(&r, &v2);
}

#[test]
fn a_server_that_never_answers_sanely_ends_failed_with_the_reason() {
    // Every answer is a 206 starting elsewhere, to the resume and to the whole-file request.
    let lie = partial(HALF + 1, &format!("bytes {}-{}/{N}", HALF + 1, N - 1), "ETag: \"v1\"");
    let r = interrupted_then_resumed(vec![first(true), lie], &["--retries", "3"]);
    assert_eq!(r.second.status.code(), Some(1), "{}", stderr(&r.second));
    assert_eq!(r.server.requests().len(), 1 + 4, "bounded by the retry budget");
    let text = stderr(&r.second);
    assert!(
        text.contains("206 Partial Content to a request without Range"),
        "{text}"
    );
    assert!(!r.out.join("r.bin").exists());
}

/// One run against one scripted answer (repeated), with `extra` arguments and manifest `line`.
fn once(reply: Reply, line: impl Fn(&str) -> String, extra: &[&str]) -> (Output, tempfile::TempDir, Scripted) {
    let server = Scripted::start(vec![reply]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let list = tmp.path().join("list.jsonl");
    std::fs::write(&list, line(&format!("{}/r.bin", server.base())) + "\n").unwrap();
    let mut args = vec![
        "get",
        "-i",
        path(&list),
        "-o",
        path(&out),
        "--retries",
        "1",
        "--retry-wait",
        "10ms",
    ];
    args.extend_from_slice(extra);
    let output = run(&args);
    (output, tmp, server)
}

fn plain(url: &str) -> String {
    format!("{{\"url\":\"{url}\"}}")
}

#[test]
fn an_empty_body_is_done_only_when_expected() {
    let empty = || Reply::new("HTTP/1.1 200 OK\nContent-Length: 0\nETag: \"e\"", "");
    let (o, tmp, _s) = once(empty(), plain, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("empty body"), "{}", stderr(&o));
    assert!(!tmp.path().join("out/r.bin").exists());
    let (o, tmp, _s) = once(empty(), plain, &["--allow-empty"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(tmp.path().join("out/r.bin")).unwrap().len(), 0);
    let sized = |url: &str| format!("{{\"url\":\"{url}\",\"size\":0}}");
    let (o, _tmp, _s) = once(empty(), sized, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn a_body_with_no_length_is_done_but_unverified() {
    // Close-delimited and cut short: nothing can tell. Recorded done, marked unverified.
    let cut = Reply::new("HTTP/1.1 200 OK", v1()).cut(1234);
    let (o, tmp, s) = once(cut.clone(), plain, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("1 file(s) had no length to check"),
        "{}",
        stderr(&o)
    );
    let out = tmp.path().join("out");
    assert_eq!(std::fs::metadata(out.join("r.bin")).unwrap().len(), 1234);
    let row = archive_row(&out, &format!("{}/r.bin", s.base()));
    assert_eq!((row.status, row.verified), (haul::archive::RowStatus::Done, false));
    // With a manifest size, the same cut is a short body: never recorded done.
    let sized = |url: &str| format!("{{\"url\":\"{url}\",\"size\":{N}}}");
    let (o, tmp, _s) = once(cut, sized, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(!tmp.path().join("out/r.bin").exists());
}

#[test]
fn size_limits_apply_before_and_during_the_body() {
    let sized = |url: &str| format!("{{\"url\":\"{url}\",\"size\":100000}}");
    // A Content-Length that disagrees with the manifest: failed before the body is read.
    let big = body_for("big", 4 << 20);
    let announced = Reply::new(&format!("HTTP/1.1 200 OK\nContent-Length: {}", big.len()), big.clone());
    let started = std::time::Instant::now();
    let (o, _tmp, s) = once(announced, sized, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("announces 4194304 bytes, the manifest says 100000"),
        "{}",
        stderr(&o)
    );
    assert_eq!(s.requests().len(), 2, "each attempt stops at the head");
    // An endless (close-delimited) body: stopped at the first byte past the expected size.
    let endless = Reply::new("HTTP/1.1 200 OK", body_for("endless", 64 << 20));
    let (o, tmp, _s) = once(endless, sized, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("longer than the expected 100000 bytes"),
        "{}",
        stderr(&o)
    );
    assert!(!tmp.path().join("out/r.bin").exists());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "no body read to its end"
    );
}

const MIB: u64 = 1024 * 1024;
/// The segmented test file's size.
const SPLIT_SIZE: u64 = 16 * MIB;
const SPLIT_ARGS: [&str; 6] = ["--split", "4", "--min-split-size", "1M", "--progress", "none"];

/// The ranges a `segments` column lists as missing.
fn missing(row: &haul::archive::Row) -> Vec<(u64, u64)> {
    row.segments
        .as_deref()
        .unwrap_or("")
        .split(',')
        .filter(|r| !r.is_empty())
        .map(|r| {
            let (a, b) = r.split_once('-').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

/// Starts one job (id "big", path big.bin) throttled per connection, and kills haul with
/// SIGKILL once the archive records a split transfer with some ranges done. Returns the
/// manifest maker (the rerun's URL may differ: same id) and the ranges recorded missing.
fn killed_mid_split(server: &haul_test::FaultServer, dir: &Path, out: &Path) -> Vec<(u64, u64)> {
    let slow = dir.join("slow.jsonl");
    std::fs::write(&slow, job_line(server.url("big.bin", SPLIT_SIZE, "rate=1000000"))).unwrap();
    let mut child = super::haul()
        .args(get_args(&slow, out, &SPLIT_ARGS))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let archive = out.join(".haul/archive.sqlite");
    let recorded = || {
        haul::archive::ArchiveReader::open(&archive)
            .ok()
            .and_then(|r| r.lookup("big").ok().flatten())
    };
    let split_and_going = super::wait_for(std::time::Duration::from_secs(30), || {
        recorded().is_some_and(|row| {
            let left: u64 = missing(&row).iter().map(|(a, b)| b - a).sum();
            missing(&row).len() >= 2 && left < SPLIT_SIZE - 2 * MIB
        })
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(split_and_going, "the archive never showed a split transfer in progress");
    let row = recorded().unwrap();
    assert_eq!(row.status, haul::archive::RowStatus::Partial);
    assert!(!out.join("big.bin").exists(), "no partial bytes at the final name");
    missing(&row)
}

/// The job as a JSONL line with a fixed id and path.
fn job_line(url: String) -> String {
    format!("{{\"url\":\"{url}\",\"id\":\"big\",\"path\":\"big.bin\"}}\n")
}

/// Issue 11: `kill -9` in the middle of a segmented transfer; the rerun asks only for the ranges
/// the archive lists as missing, each with If-Range, and the file ends whole.
#[test]
fn kill_9_mid_segmented_transfer_then_only_missing_ranges_are_fetched() {
    let rt = super::runtime();
    let server = rt.block_on(haul_test::FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let gaps = killed_mid_split(&server, tmp.path(), &out);

    let fast = tmp.path().join("fast.jsonl");
    std::fs::write(&fast, job_line(server.url("big.bin", SPLIT_SIZE, ""))).unwrap();
    let before = server.headers_seen().len();
    let second = run(&get_args(&fast, &out, &SPLIT_ARGS));
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    let file = std::fs::read(out.join("big.bin")).unwrap();
    assert_eq!(
        sha256_hex(&file),
        sha256_hex(&body_for("big.bin", SPLIT_SIZE)),
        "no spliced bytes"
    );
    let asked: Vec<_> = server.headers_seen()[before..]
        .iter()
        .filter(|(path, _)| path == "/f/big.bin")
        .map(|(_, headers)| {
            let range = headers.get("range").expect("every request of the rerun is a range");
            assert!(headers.contains_key("if-range"), "ranges are asked with If-Range");
            let range = range.to_str().unwrap().strip_prefix("bytes=").unwrap().to_owned();
            let (a, b) = range.split_once('-').unwrap();
            (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap() + 1)
        })
        .collect();
    assert!(!asked.is_empty());
    // (Ranges are asked whole; a thief may cut one short, so their lengths add up to more than
    // the bytes sent. What matters: none starts in data the part already held.)
    for (from, to) in &asked {
        assert!(
            gaps.iter().any(|(a, b)| from >= a && to <= b),
            "range {from}-{to} was not missing (missing: {gaps:?})"
        );
    }
    let row = archive_row(&out, "big");
    assert_eq!(row.status, haul::archive::RowStatus::Done);
    assert_eq!(row.segments, None);
    assert!(
        std::fs::read_dir(out.join(".haul/parts")).unwrap().next().is_none(),
        "no part left"
    );
}

/// Issue 11: the file changed between the runs (a new ETag): the rerun's ranges are refused by
/// If-Range, the file is fetched again whole, and it is exactly one version, never a mix.
#[test]
fn a_segmented_part_of_a_file_that_changed_is_fetched_again_whole() {
    let rt = super::runtime();
    let server = rt.block_on(haul_test::FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    killed_mid_split(&server, tmp.path(), &out);
    let changed = tmp.path().join("changed.jsonl");
    std::fs::write(&changed, job_line(server.url("big.bin", SPLIT_SIZE, "etag=changing"))).unwrap();
    let second = run(&get_args(&changed, &out, &SPLIT_ARGS));
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    let file = std::fs::read(out.join("big.bin")).unwrap();
    let hits = server.hits("/f/big.bin");
    let version = (1..=hits).find(|&v| file == haul_test::body_version("big.bin", SPLIT_SIZE, v));
    assert!(
        version.is_some(),
        "the file is one new version, whole ({hits} requests)"
    );
    assert_ne!(file, body_for("big.bin", SPLIT_SIZE), "not the old version");
    assert!(
        std::fs::read_dir(out.join(".haul/parts")).unwrap().next().is_none(),
        "no part left"
    );
}
