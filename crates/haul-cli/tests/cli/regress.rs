//! Issue 8 regressions that need whole processes: two haul processes on one output directory,
//! a read-only destination, an archive that fails mid-run, cancelling while the manifest
//! blocks, and the open-file limit.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use haul_test::{FaultServer, body_for, sha256_hex};

use super::{get_args, haul, manifest, path, run, runtime, stderr};

/// Mounts a tmpfs with `options` at `dir`, or says why it could not (it needs root; CI runs as
/// root, so there the test must run: a skip under CI is a failure).
pub(crate) fn mount_tmpfs(dir: &Path, options: &str) -> bool {
    std::fs::create_dir_all(dir).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", options, "tmpfs", path(dir)])
        .output();
    let why = match mounted {
        Ok(o) if o.status.success() => return true,
        Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
        Err(e) => e.to_string(),
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must be able to mount a tmpfs: {why}"
    );
    let _ = writeln!(std::io::stderr(), "SKIPPED: cannot mount a tmpfs here ({why})");
    false
}

pub(crate) fn unmount(dir: &Path) {
    let _ = Command::new("umount").arg(path(dir)).status();
}

/// Waits for `child` at most `limit`; kills it and fails the test past that.
fn wait_bounded(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("haul did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Class 7: a second haul on the same output directory stops at start, whatever its archive.
#[test]
fn a_second_process_on_one_output_directory_stops_at_start() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let list = manifest(tmp.path(), &[server.url("slow.bin", 2_000_000, "rate=1000000")]);
    let mut first = haul()
        .args(get_args(&list, &out, &["--progress", "none"]))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let lock = out.join(".haul/lock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lock.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let other_archive = tmp.path().join("other.sqlite");
    for extra in [vec!["--archive", path(&other_archive)], vec!["--no-archive"]] {
        let mut args = get_args(&list, &out, &["--progress", "none"]);
        args.extend(extra);
        let second = run(&args);
        assert_eq!(second.status.code(), Some(3), "{}", stderr(&second));
        assert!(
            stderr(&second).contains("in use by another haul process"),
            "{}",
            stderr(&second)
        );
    }
    let status = wait_bounded(&mut first, Duration::from_secs(60));
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        sha256_hex(&std::fs::read(out.join("slow.bin")).unwrap()),
        sha256_hex(&body_for("slow.bin", 2_000_000))
    );
}

/// Class 9: a read-only destination fails its job; the 20 others are done, on every rerun.
/// A writable mount inside the output tree (another file system) receives its file whole.
#[test]
fn a_read_only_destination_fails_only_its_job() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let (ro, other) = (out.join("ro"), out.join("mnt"));
    if !mount_tmpfs(&ro, "ro,size=64k") {
        return;
    }
    if !mount_tmpfs(&other, "size=1m") {
        unmount(&ro);
        return;
    }
    let mut lines = vec![
        format!("{}\tro/x.bin", server.url("x.bin", 100, "")),
        format!("{}\tmnt/y.bin", server.url("y.bin", 70_000, "")),
    ];
    lines.extend((0..20).map(|i| server.url(&format!("ok{i}.bin"), 1000, "")));
    let list = manifest(tmp.path(), &lines);
    let result = run(&get_args(&list, &out, &["--progress", "none"]));
    let again = run(&get_args(&list, &out, &["--progress", "none"]));
    let across = std::fs::read(other.join("y.bin")).ok();
    unmount(&ro);
    unmount(&other);
    assert_eq!(
        across.map(|b| sha256_hex(&b)),
        Some(sha256_hex(&body_for("y.bin", 70_000))),
        "copied whole across file systems"
    );
    assert_eq!(result.status.code(), Some(1), "{}", stderr(&result));
    let text = stderr(&result);
    assert!(text.contains("21 done") && text.contains("1 failed"), "{text}");
    assert!(text.contains("Read-only file system"), "{text}");
    assert_eq!(again.status.code(), Some(1), "{}", stderr(&again));
    assert!(stderr(&again).contains("21 skipped"), "{}", stderr(&again));
}

/// Class 9: an archive that fails mid-run (its disk is full) stops the run at once: the files
/// on disk are those the archive recorded, give or take what was in flight.
#[test]
fn an_archive_failing_mid_run_stops_the_run() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let small = tmp.path().join("archive-disk");
    if !mount_tmpfs(&small, "size=96k") {
        return;
    }
    let lines: Vec<String> = (0..1500)
        .map(|i| server.url(&format!("{:0>120}.bin", i), 100, "delay=1"))
        .collect();
    let list = manifest(tmp.path(), &lines);
    let archive = small.join("a.sqlite");
    let result = run(&get_args(
        &list,
        &out,
        &["--archive", path(&archive), "--progress", "none", "-j", "8"],
    ));
    let rows = haul::archive::ArchiveReader::open(&archive)
        .ok()
        .and_then(|r| r.counts().ok())
        .map_or(0, |c| c.iter().map(|(_, n, _)| *n).sum::<u64>());
    unmount(&small);
    let text = stderr(&result);
    assert_eq!(result.status.code(), Some(3), "{text}");
    assert!(text.contains("archive"), "{text}");
    let files = std::fs::read_dir(&out).unwrap().count() as u64 - 1; // less .haul
    assert!(files < 1500, "the run stopped ({files} files)");
    assert!(files <= rows + 600, "{files} files on disk, {rows} rows recorded");
}

/// Class 12: Ctrl-C while the manifest blocks (a producer that stays open) ends the run.
#[test]
fn cancel_while_the_manifest_blocks() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let mut child = haul()
        .args(["get", "-i", "-", "-o", path(&out), "--progress", "none"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{}", server.url("first.bin", 100, "")).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.join("first.bin").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(out.join("first.bin").exists(), "the first line was fetched");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(10));
    drop(stdin);
    assert_eq!(status.code(), Some(130));
}

/// Class 10: `-j 256` under `ulimit -n 64`: lowered with a notice, every job done.
#[test]
fn a_low_open_file_limit_lowers_concurrency() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let lines: Vec<String> = (0..300)
        .map(|i| server.url(&format!("n{i}.bin"), 2000, "delay=5"))
        .collect();
    let list = manifest(tmp.path(), &lines);
    let command = format!(
        "ulimit -n 64 && exec '{}' get -i '{}' -o '{}' -j 256 --per-host 256 --progress none",
        env!("CARGO_BIN_EXE_haul"),
        path(&list),
        path(&out)
    );
    let result = Command::new("bash").args(["-c", &command]).output().unwrap();
    let text = stderr(&result);
    assert_eq!(result.status.code(), Some(0), "{text}");
    assert!(
        text.contains("-j 256 lowered to 8: the open-file limit is 64"),
        "{text}"
    );
    assert!(text.contains("300 done"), "{text}");
}

/// Class 5: a symlink planted at the `--retry-failed` spool file is replaced, not followed.
#[test]
fn the_retry_spool_is_never_followed() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let list = manifest(tmp.path(), &[server.url("gone.bin", 10, "status=404")]);
    let first = run(&get_args(&list, &out, &["--progress", "none"]));
    assert_eq!(first.status.code(), Some(1));
    let victim = tmp.path().join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, out.join(".haul/retry-failed.jsonl")).unwrap();
    let retry = run(&["get", "-o", path(&out), "--retry-failed", "--progress", "none"]);
    assert_eq!(retry.status.code(), Some(1), "{}", stderr(&retry));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let spool = std::fs::symlink_metadata(out.join(".haul/retry-failed.jsonl")).unwrap();
    assert!(spool.is_file(), "haul's own file, created exclusively");
}

/// Issue 9: per-host settings from a TOML file at the default location
/// (`$XDG_CONFIG_HOME/haul/config.toml`): the ceiling holds (a server of capacity 1 never has
/// to refuse) and the section's headers reach that host.
#[test]
fn a_toml_configuration_sets_per_host_limits_and_headers() {
    let rt = runtime();
    let capacity = haul_test::Capacity {
        k: 1,
        latency: Duration::from_millis(20),
        beyond: haul_test::Beyond::Refuse { retry_after: 1 },
    };
    let server = rt.block_on(FaultServer::start_with_capacity(capacity));
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("xdg");
    std::fs::create_dir_all(home.join("haul")).unwrap();
    let port = server.base().rsplit(':').next().unwrap().to_owned();
    std::fs::write(
        home.join("haul/config.toml"),
        format!(
            "per_host = 8\n\n[hosts.\"127.0.0.1:{port}\"]\nper_host = 1\nheaders = {{ X-From-Config = \"yes\" }}\n"
        ),
    )
    .unwrap();
    let lines: Vec<String> = (0..20).map(|i| server.url(&format!("c{i}"), 100, "")).collect();
    let list = manifest(tmp.path(), &lines);
    let out = tmp.path().join("out");
    let result = haul()
        .args(get_args(&list, &out, &["--progress", "none"]))
        .env("XDG_CONFIG_HOME", &home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(0), "{}", stderr(&result));
    assert!(
        server.log().iter().all(|l| l.status == 200),
        "one at a time: never refused"
    );
    assert!(
        server
            .headers_seen()
            .iter()
            .all(|(_, h)| h.get("x-from-config").is_some_and(|v| v == "yes"))
    );
    // A mistake in the file is a usage error naming it.
    std::fs::write(home.join("haul/config.toml"), "per_hosts = 1\n").unwrap();
    let bad = haul()
        .args(get_args(&list, &out, &["--progress", "none"]))
        .env("XDG_CONFIG_HOME", &home)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("config.toml") && stderr(&bad).contains("per_hosts"),
        "{}",
        stderr(&bad)
    );
}
