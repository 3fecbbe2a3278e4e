//! End-to-end tests of the built `haul` binary: exit codes, messages, the archive across runs,
//! kill -9 crash safety, the archive lock, signals and bounded memory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use haul_test::{FaultServer, Nginx, body_for, sha256_hex};

mod display;
mod queue;
mod regress;
mod resume;
mod s3;
mod usage;

fn haul() -> Command {
    Command::new(env!("CARGO_BIN_EXE_haul"))
}

/// Runs haul to its end, at most 5 minutes: a hang fails the test instead of stalling CI.
fn run(args: &[&str]) -> Output {
    let mut command = haul();
    command.args(args);
    run_command(command, None)
}

/// Runs a prepared haul command with `input` on its standard input (or none), at most 5 minutes.
fn run_command(mut command: Command, input: Option<Vec<u8>>) -> Output {
    let mut child = command
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run haul");
    if let Some(input) = input {
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Write as _;
            let _ = stdin.write_all(&input);
        });
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(output) => output.expect("run haul"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("haul {command:?} did not end within 5 minutes");
        }
    }
}

/// Waits until `ready` holds, at most `limit`; true when it did.
fn wait_for(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ready()
}

/// Waits until `part` holds more than `bytes` (data is flowing: an event, not a fixed sleep),
/// then sends `signal` (`-INT`, `-TERM`) to `child`.
fn signal_when_flowing(child: &std::process::Child, part: &Path, bytes: u64, signal: &str) {
    assert!(
        wait_for(Duration::from_secs(20), || std::fs::metadata(part)
            .is_ok_and(|m| m.len() > bytes)),
        "no data reached {}",
        part.display()
    );
    Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `get -i LIST -o OUT` followed by `extra`.
fn get_args<'a>(list: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["get", "-i", path(list), "-o", path(out)];
    args.extend_from_slice(extra);
    args
}

fn manifest(dir: &Path, lines: &[String]) -> PathBuf {
    let file = dir.join("urls.txt");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    file
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn exit_codes_and_messages() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");

    let none = run(&["get", "-o", path(&out)]);
    assert_eq!(none.status.code(), Some(2));
    assert!(stderr(&none).contains("nothing to download"), "{}", stderr(&none));

    let good = manifest(
        tmp.path(),
        &[server.url("a.bin", 1000, ""), server.url("b.bin", 2000, "")],
    );
    let ok = run(&get_args(&good, &out, &["--progress", "none"]));
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert_eq!(
        sha256_hex(&std::fs::read(out.join("a.bin")).unwrap()),
        sha256_hex(&body_for("a.bin", 1000))
    );

    let mixed = manifest(
        tmp.path(),
        &[
            server.url("c.bin", 10, ""),
            "ftp://nope/x".into(),
            server.url("gone.bin", 10, "status=404"),
        ],
    );
    let report = tmp.path().join("report.jsonl");
    let some = run(&get_args(
        &mixed,
        &out,
        &["--progress", "none", "--report", path(&report)],
    ));
    assert_eq!(some.status.code(), Some(1));
    let text = stderr(&some);
    assert!(text.contains("line 2: unsupported scheme"), "{text}");
    assert!(text.contains("HTTP 404"), "{text}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&report)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "two jobs and the bad line");
    let bad = lines.iter().find(|l| l["status"] == "bad_line").unwrap();
    assert_eq!(bad["line"], 2);
    let gone = lines.iter().find(|l| l["status"] == "failed").unwrap();
    assert_eq!(gone["http_status"], 404);
    assert_eq!(gone["attempts"], 1);

    // --strict: one bad line means nothing is downloaded.
    let strict_out = tmp.path().join("strict");
    let strict = run(&get_args(&mixed, &strict_out, &["--strict"]));
    assert_eq!(strict.status.code(), Some(2));
    assert!(stderr(&strict).contains("line 2"), "{}", stderr(&strict));
    assert!(!strict_out.join("c.bin").exists());

    // status and failed read the archive; --retry-failed retries only the failures.
    let status = run(&["status", path(&out)]);
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status_text.contains("done: 3 jobs") && status_text.contains("http 404"),
        "{status_text}"
    );
    let failed = run(&["failed", path(&out)]);
    let failed_text = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed_text.lines().count(), 1);
    assert!(failed_text.contains("gone.bin"));
    let hits_before = server.hits("/f/gone.bin");
    let retry = run(&["get", "-o", path(&out), "--retry-failed", "--progress", "none"]);
    assert_eq!(retry.status.code(), Some(1));
    assert_eq!(server.hits("/f/gone.bin"), hits_before + 1);
    assert_eq!(server.hits("/f/a.bin"), 1, "done jobs are not fetched again");
}

#[test]
fn archive_import_skips_known_ids() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let ids = tmp.path().join("ids.txt");
    std::fs::write(&ids, "post-1\npost-2\n").unwrap();
    let import = run(&["archive", "import", path(&ids), "--archive", path(&out)]);
    assert!(import.status.success(), "{}", stderr(&import));
    let jsonl = tmp.path().join("m.jsonl");
    let lines: Vec<String> = (1..=3)
        .map(|i| {
            format!(
                "{{\"url\":\"{}\",\"id\":\"post-{i}\"}}",
                server.url(&format!("p{i}.jpg"), 100, "")
            )
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let got = run(&get_args(&jsonl, &out, &["--progress", "none"]));
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(server.total_hits(), 1, "only post-3 was fetched");
    assert!(out.join("p3.jpg").exists() && !out.join("p1.jpg").exists());
}

#[test]
fn second_process_on_one_archive_gets_a_clear_error() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let lines: Vec<String> = (0..40)
        .map(|i| server.url(&format!("s{i}"), 100, "delay=100"))
        .collect();
    let list = manifest(tmp.path(), &lines);
    let mut first = haul()
        .args(get_args(&list, &out, &["-j", "2", "--progress", "none"]))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.total_hits() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = run(&get_args(&list, &out, &["--progress", "none"]));
    assert_eq!(second.status.code(), Some(3));
    assert!(
        stderr(&second).contains("in use by another haul process"),
        "{}",
        stderr(&second)
    );
    // With --wait-archive a second process waits for the lock, then skips what the first did.
    let waiting = haul()
        .args(get_args(&list, &out, &["--wait-archive", "--progress", "none"]))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(first.wait().unwrap().success());
    let waited = waiting.wait_with_output().unwrap();
    assert_eq!(waited.status.code(), Some(0), "{}", stderr(&waited));
    assert!(stderr(&waited).contains("40 skipped"), "{}", stderr(&waited));
    assert_eq!(server.total_hits(), 40, "the waiting process fetched nothing again");
    let status = run(&["status", path(&out)]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("done: 40 jobs"));
}

#[test]
fn sigint_leaves_resumable_parts_and_exits_130() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let size = 4_000_000;
    let list = manifest(tmp.path(), &[server.url("big.bin", size, "rate=2000000&times=1")]);
    let child = haul()
        .args(get_args(&list, &out, &["--progress", "none"]))
        .spawn()
        .unwrap();
    signal_when_flowing(&child, &haul::store::part_path(&out, "big.bin"), 0, "-INT");
    let result = child.wait_with_output().unwrap();
    assert_eq!(result.status.code(), Some(130));
    let part = std::fs::metadata(haul::store::part_path(&out, "big.bin"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(part > 0, "the partial data is kept in the part file");
    assert!(!out.join("big.bin").exists());
    let rerun = run(&get_args(&list, &out, &["--progress", "none"]));
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    assert_eq!(
        sha256_hex(&std::fs::read(out.join("big.bin")).unwrap()),
        sha256_hex(&body_for("big.bin", size))
    );
    let ranged = server
        .headers_seen()
        .iter()
        .filter(|(_, h)| h.contains_key("range"))
        .count();
    assert_eq!(ranged, 1, "the rerun resumed the part with Range");
}

/// A seeded generator for kill points (xorshift).
struct Seeded(u64);

impl Seeded {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
fn kill_9_at_random_points_then_rerun_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let mut expected = Vec::new();
    for i in 0..2_000u64 {
        let name = format!("k{i:04}.bin");
        let body = body_for(&name, 2_000 + (i * 7_919) % 30_000);
        std::fs::write(www.join(&name), &body).unwrap();
        expected.push((name, sha256_hex(&body)));
    }
    let nginx = Nginx::start(&www, &tmp.path().join("nginx"));
    let lines: Vec<String> = expected.iter().map(|(n, _)| format!("{}/{n}", nginx.base())).collect();
    let list = manifest(tmp.path(), &lines);
    let out = tmp.path().join("out");
    let args = get_args(&list, &out, &["-j", "2", "--per-host", "2", "--progress", "none"]);
    let mut seeded = Seeded(0x5eed_1234);
    // Requests per file name, from the access log ("GET /NAME HTTP/1.1").
    let fetch_counts = |log: &[String]| {
        let mut counts = std::collections::HashMap::<String, usize>::new();
        for line in log {
            if let Some(name) = line.split_whitespace().find_map(|w| w.strip_prefix('/')) {
                *counts.entry(name.to_owned()).or_default() += 1;
            }
        }
        counts
    };
    for round in 0..6 {
        let child = haul()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(30 + seeded.below(250)));
        Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .unwrap();
        let _ = child.wait_with_output();
        // Files at their final names now must never be fetched again.
        let counts = fetch_counts(&nginx.access_log());
        let complete: Vec<(String, usize)> = expected
            .iter()
            .filter(|(n, _)| out.join(n).exists())
            .map(|(n, _)| (n.clone(), counts.get(n.as_str()).copied().unwrap_or(0)))
            .collect();
        for (name, sha) in &expected {
            if out.join(name).exists() {
                assert_eq!(
                    &sha256_hex(&std::fs::read(out.join(name)).unwrap()),
                    sha,
                    "round {round}: {name}"
                );
            }
        }
        let rerun = haul().args(&args).output().unwrap();
        assert_eq!(rerun.status.code(), Some(0), "round {round}: {}", stderr(&rerun));
        let counts = fetch_counts(&nginx.access_log());
        for (name, before) in complete {
            assert_eq!(
                counts.get(name.as_str()).copied().unwrap_or(0),
                before,
                "round {round}: {name} was fetched again"
            );
        }
        for (name, sha) in &expected {
            assert_eq!(
                &sha256_hex(&std::fs::read(out.join(name)).unwrap()),
                sha,
                "round {round}: {name}"
            );
        }
        // The archive's done rows are exactly the files on disk.
        let status = run(&["status", path(&out)]);
        assert!(
            String::from_utf8_lossy(&status.stdout).contains("done: 2000 jobs"),
            "round {round}"
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}

/// Peak RSS (VmHWM) of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Bytes of haul's read-ahead spill files under `out` now.
fn spill_bytes(out: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(out.join(".haul")) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("spill-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Peak RSS (KiB) and peak read-ahead spill size (bytes) of a run over `lines` jobs of one host.
fn peak_rss_for(lines: usize, server: &FaultServer, dir: &Path) -> (u64, u64) {
    let list = dir.join(format!("m{lines}.txt"));
    let mut text = String::with_capacity(lines * 60);
    for i in 0..lines {
        text.push_str(&server.url(&format!("t{i}"), 16, ""));
        text.push('\n');
    }
    std::fs::write(&list, text).unwrap();
    let out = dir.join(format!("out{lines}"));
    let mut child = haul()
        .args(get_args(
            &list,
            &out,
            &["-j", "64", "--per-host", "64", "--no-archive", "--progress", "none"],
        ))
        .spawn()
        .unwrap();
    let (mut peak, mut spill) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        spill = spill.max(spill_bytes(&out));
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success());
            break;
        }
        assert!(Instant::now() < deadline, "run took too long");
        std::thread::sleep(Duration::from_millis(50));
    }
    (peak, spill)
}

#[test]
fn memory_stays_bounded_over_a_200k_line_manifest() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let (small, small_spill) = peak_rss_for(20_000, &server, tmp.path());
    let (large, large_spill) = peak_rss_for(200_000, &server, tmp.path());
    assert_eq!(server.total_hits(), 220_000);
    // Ten times the lines: nothing grows per job past fixed bounds (path claims are held only in
    // flight; the duplicate index keeps at most 114,688 ids in memory, then spills to disk).
    assert!(large < 64 * 1024, "peak RSS {large} KiB over 200,000 lines");
    assert!(
        large < small + 12 * 1024,
        "peak RSS grew from {small} KiB to {large} KiB"
    );
    // One host all the way: reading ahead for other hosts stops after 16,384 jobs on disk
    // found none, so the spill does not grow with the manifest either.
    // (16,384 jobs of about 320 bytes; 200,000 spilled would be over 60 MB. How much of the
    // 20,000-line run spills depends on timing, so the bound is absolute.)
    assert!(
        large_spill < 8 * 1024 * 1024,
        "read-ahead spill grew to {large_spill} bytes (20,000 lines: {small_spill})"
    );
}

#[test]
fn disk_full_stops_with_the_fatal_code_and_keeps_finished_files() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("small-disk");
    if !regress::mount_tmpfs(&out, "size=1m") {
        return;
    }
    let lines: Vec<String> = (0..6).map(|i| server.url(&format!("d{i}.bin"), 300_000, "")).collect();
    let list = manifest(tmp.path(), &lines);
    let archive = tmp.path().join("archive.sqlite");
    let result = run(&get_args(
        &list,
        &out,
        &["-j", "1", "--archive", path(&archive), "--progress", "none"],
    ));
    let text = stderr(&result);
    let done: Vec<String> = (0..6)
        .map(|i| format!("d{i}.bin"))
        .filter(|n| out.join(n).exists())
        .collect();
    regress::unmount(&out);
    assert_eq!(result.status.code(), Some(3), "{text}");
    assert!(text.contains("free some space"), "{text}");
    assert!(
        !done.is_empty() && done.len() < 6,
        "some files fit before the disk filled: {done:?}"
    );
    // The archive records exactly the finished files, never the one that hit ENOSPC.
    let status = run(&["status", path(&archive)]);
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status_text.contains(&format!("done: {} jobs", done.len())),
        "{status_text} vs {done:?}"
    );
}

#[test]
fn proxies_from_the_flag_and_the_environment_with_no_proxy() {
    let rt = runtime();
    let proxy = rt.block_on(FaultServer::start());
    let direct = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    // Port 9 on loopback is closed: the file can only arrive through the proxy.
    let unreachable = "http://127.0.0.1:9/f/via.bin?size=100".to_owned();
    let list = manifest(tmp.path(), &[unreachable]);
    let out = tmp.path().join("a");
    let flag = run(&get_args(
        &list,
        &out,
        &["--proxy", &proxy.base(), "--progress", "none", "--retries", "0"],
    ));
    assert_eq!(flag.status.code(), Some(0), "{}", stderr(&flag));
    assert_eq!(proxy.hits("/f/via.bin"), 1);
    assert_eq!(std::fs::read(out.join("via.bin")).unwrap(), body_for("via.bin", 100));

    // HTTP_PROXY from the environment, and NO_PROXY exempting the direct server's host.
    let list = manifest(tmp.path(), &[direct.url("env.bin", 100, "")]);
    let out = tmp.path().join("b");
    let env = haul()
        .args(get_args(&list, &out, &["--progress", "none"]))
        .env("HTTP_PROXY", proxy.base())
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap();
    assert_eq!(env.status.code(), Some(0), "{}", stderr(&env));
    assert_eq!((direct.hits("/f/env.bin"), proxy.hits("/f/env.bin")), (1, 0));
    let out = tmp.path().join("c");
    let proxied = haul()
        .args(get_args(&list, &out, &["--progress", "none"]))
        .env("HTTP_PROXY", proxy.base())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    assert_eq!(proxied.status.code(), Some(0), "{}", stderr(&proxied));
    assert_eq!(proxy.hits("/f/env.bin"), 1, "HTTP_PROXY is honoured");
}

#[test]
fn netrc_cookies_and_secrets_stay_out_of_output() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let netrc = tmp.path().join("netrc");
    std::fs::write(&netrc, "machine 127.0.0.1 login alice password n3trc-pass\n").unwrap();
    let cookies = tmp.path().join("cookies.txt");
    std::fs::write(
        &cookies,
        "# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsid\tc00kie-secret\n",
    )
    .unwrap();
    let signed = format!(
        "{}&X-Amz-Signature=sig-secret",
        server.url("gone.bin", 10, "status=403")
    );
    let list = manifest(tmp.path(), &[server.url("a.bin", 10, ""), signed]);
    let out = tmp.path().join("out");
    let report = tmp.path().join("report.jsonl");
    let result = run(&get_args(
        &list,
        &out,
        &[
            "--allow-insecure-auth",
            "--netrc-file",
            path(&netrc),
            "--cookies",
            path(&cookies),
            "--report",
            path(&report),
            "--progress",
            "plain",
        ],
    ));
    assert_eq!(result.status.code(), Some(1));
    let seen = server.headers_seen();
    let auth = seen[0].1.get("authorization").unwrap().to_str().unwrap().to_owned();
    assert_eq!(
        auth, "Basic YWxpY2U6bjN0cmMtcGFzcw==",
        "alice:n3trc-pass from the netrc file"
    );
    assert_eq!(seen[0].1.get("cookie").unwrap(), "sid=c00kie-secret");
    let printed = format!("{}{}", stderr(&result), std::fs::read_to_string(&report).unwrap());
    for secret in ["n3trc-pass", "c00kie-secret", "sig-secret"] {
        assert!(!printed.contains(secret), "{secret} was printed: {printed}");
    }
    assert!(printed.contains("X-Amz-Signature=***"), "{printed}");
    // `haul failed` prints the manifest's own URL (data that runs again), never what came from
    // the netrc file or the cookie jar.
    let failed = String::from_utf8_lossy(&run(&["failed", path(&out)]).stdout).into_owned();
    assert!(failed.contains("X-Amz-Signature=sig-secret"), "{failed}");
    for secret in ["n3trc-pass", "c00kie-secret"] {
        assert!(!failed.contains(secret), "{secret} was printed: {failed}");
    }
}

#[test]
fn insecure_is_loud() {
    let tmp = tempfile::tempdir().unwrap();
    let list = manifest(tmp.path(), &["http://127.0.0.1:9/x".into()]);
    let out = tmp.path().join("out");
    let result = run(&get_args(
        &list,
        &out,
        &["--insecure", "--retries", "0", "--progress", "none"],
    ));
    assert!(
        stderr(&result).contains("TLS certificates are NOT verified"),
        "{}",
        stderr(&result)
    );
}

#[test]
fn unwritable_output_directory_fails_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, b"not a directory").unwrap();
    let out = blocker.join("out");
    let list = manifest(tmp.path(), &["http://127.0.0.1:9/x".into()]);
    let result = run(&get_args(&list, &out, &["--progress", "none"]));
    assert_eq!(result.status.code(), Some(3));
    assert!(
        stderr(&result).contains("create output directory"),
        "{}",
        stderr(&result)
    );
    assert_eq!(std::fs::read(&blocker).unwrap(), b"not a directory");
}

#[test]
fn repeated_sigint_exits_130_without_marking_anything_done() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let list = manifest(tmp.path(), &[server.url("slow.bin", 4_000_000, "rate=1000000")]);
    let child = haul()
        .args(get_args(&list, &out, &["--progress", "none"]))
        .spawn()
        .unwrap();
    let part = haul::store::part_path(&out, "slow.bin");
    assert!(wait_for(Duration::from_secs(20), || std::fs::metadata(&part)
        .is_ok_and(|m| m.len() > 0)));
    let started = Instant::now();
    for _ in 0..2 {
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = child.wait_with_output().unwrap();
    assert_eq!(result.status.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(3), "exited promptly");
    assert!(!out.join("slow.bin").exists(), "nothing incomplete at the final name");
    let status = run(&["status", path(&out)]);
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("done:"),
        "nothing recorded done"
    );
}

#[test]
fn config_file_sets_headers_per_host() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("haul.conf");
    std::fs::write(&conf, "# per-host settings\n[host 127.0.0.1]\nheader = X-Api-Key: from-config\n\n[host elsewhere.example]\nheader = X-Other: no\n").unwrap();
    let list = manifest(tmp.path(), &[server.url("a.bin", 10, "")]);
    let out = tmp.path().join("out");
    let result = run(&get_args(&list, &out, &["--config", path(&conf), "--progress", "none"]));
    assert_eq!(result.status.code(), Some(0), "{}", stderr(&result));
    let seen = &server.headers_seen()[0].1;
    assert_eq!(seen.get("x-api-key").unwrap(), "from-config");
    assert!(seen.get("x-other").is_none());
    std::fs::write(&conf, "[host 127.0.0.1]\nheadr = X: y\n").unwrap();
    let bad = run(&get_args(&list, &out, &["--config", path(&conf)]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("line 2: unknown setting"), "{}", stderr(&bad));
}

#[test]
fn json_progress_writes_only_json_lines_with_events_and_a_summary() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    // About 2.5 s of transfer: status lines before the summary; a failure; a host pause (429).
    let list = manifest(
        tmp.path(),
        &[
            server.url("slow.bin", 2_500_000, "rate=1000000"),
            server.url("quick.bin", 10, ""),
            server.url("gone.bin", 10, "status=404"),
            server.url("busy.bin", 10, "status=429&retry_after=1&times=1"),
        ],
    );
    let out = tmp.path().join("out");
    let result = run(&get_args(
        &list,
        &out,
        &["--progress", "json", "--report", "-", "--digest", "blake3"],
    ));
    assert_eq!(result.status.code(), Some(1), "{}", stderr(&result));
    let events: Vec<serde_json::Value> = stderr(&result)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of = |kind: &str| events.iter().filter(|e| e["type"] == kind).collect::<Vec<_>>();
    let progress = of("progress");
    assert!(!progress.is_empty(), "{events:?}");
    let last = progress.last().unwrap();
    assert_eq!(last["total"], 4);
    assert!(last["bytes"].as_u64().unwrap() > 0);
    assert!(
        last["files_per_s"].is_number() && last["bytes_per_s"].is_number(),
        "{last}"
    );
    assert!(last.get("eta_s").is_some(), "{last}");
    let failed = of("failed");
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0]["http_status"], 404);
    assert_eq!(failed[0]["line"], 3);
    assert_eq!(of("host_paused").len(), 1, "{events:?}");
    let summary = events.last().unwrap();
    assert_eq!(summary["type"], "summary", "the summary comes last");
    assert_eq!(
        (summary["done"].as_u64(), summary["failed"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(summary["exit_code"], 1);
    // --report - is standard output: one line per job, with its digest, duration and verified.
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    let slow = rows.iter().find(|r| r["path"] == "slow.bin").unwrap();
    assert_eq!(slow["blake3"], haul_test::blake3_hex(&body_for("slow.bin", 2_500_000)));
    assert!(slow["sha256"].is_null(), "SHA-256 is computed only when asked: {slow}");
    assert_eq!(slow["verified"], true);
    assert!(slow["duration_s"].as_f64().unwrap() > 1.0, "{slow}");
    assert!(!tmp.path().join("-").exists() && !Path::new("-").exists());
}

/// A port of 127.0.0.1 free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` from `addr` with a plain socket; the whole response (head and body).
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

#[test]
fn metrics_addr_serves_the_runs_counters_to_prometheus() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    // 20 files of 50 KB at 100 KB/s, two at a time: the run lasts about five seconds.
    let lines: Vec<String> = (0..20)
        .map(|i| server.url(&format!("m{i}.bin"), 50_000, "rate=100000"))
        .collect();
    let list = manifest(tmp.path(), &lines);
    let out = tmp.path().join("out");
    let addr = format!("127.0.0.1:{}", free_port());
    let child = haul()
        .args(get_args(
            &list,
            &out,
            &["-j", "2", "--progress", "none", "--metrics-addr", &addr],
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut scrape = String::new();
    let seen = wait_for(Duration::from_secs(30), || {
        scrape = http_get(&addr, "/metrics").unwrap_or_default();
        scrape
            .lines()
            .find_map(|l| l.strip_prefix("haul_jobs_total{outcome=\"done\"} "))
            .and_then(|n| n.parse::<f64>().ok())
            .is_some_and(|n| n >= 2.0)
    });
    assert!(seen, "no done jobs in the metrics: {scrape}");
    assert!(scrape.starts_with("HTTP/1.1 200 OK"), "{scrape}");
    assert!(scrape.contains("Content-Type: text/plain; version=0.0.4"), "{scrape}");
    assert!(scrape.contains("# TYPE haul_bytes_total counter"), "{scrape}");
    let host = format!(
        "haul_host_limit{{host=\"127.0.0.1:{}\"}}",
        server.base().rsplit(':').next().unwrap()
    );
    assert!(scrape.contains(&host), "{host} in {scrape}");
    let missing = http_get(&addr, "/other").unwrap_or_default();
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));

    // An address it cannot listen on is a usage error before anything is fetched.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let refused = run(&get_args(&list, &tmp.path().join("other"), &["--metrics-addr", &busy]));
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("--metrics-addr: cannot listen on"),
        "{}",
        stderr(&refused)
    );
}
