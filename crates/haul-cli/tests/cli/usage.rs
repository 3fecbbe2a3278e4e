//! What a new user meets: usage errors with hints and exit code 2, formats read off the
//! content, faithful retries of failed jobs, SIGTERM's exit code, --quiet.

use haul_test::{FaultServer, body_for, sha256_hex};

use super::{get_args, haul, manifest, path, run, run_command, runtime, signal_when_flowing, stderr};

#[test]
fn usage_errors_exit_2_with_a_hint_and_touch_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let list = manifest(tmp.path(), &["http://127.0.0.1:9/a".to_owned()]);
    let dir = tmp.path().join("a-directory");
    std::fs::create_dir(&dir).unwrap();
    let binary = tmp.path().join("photo.bin");
    std::fs::write(&binary, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR").unwrap();
    let csv = tmp.path().join("list.csv");
    std::fs::write(&csv, "name,link\nx,http://127.0.0.1:9/a\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["get", "htp://127.0.0.1/x", "-o", path(&out)],
            "did you mean http://127.0.0.1/x?",
        ),
        (
            vec!["get", "http//127.0.0.1/x", "-o", path(&out)],
            "did you mean http://127.0.0.1/x?",
        ),
        (
            vec!["get", "ftp://127.0.0.1/x", "-o", path(&out)],
            "only http:// and https://",
        ),
        (vec!["get", path(&list), "-o", path(&out)], "did you mean `-i "),
        (get_args(&dir, &out, &[]), "is a directory"),
        (get_args(&binary, &out, &[]), "binary data"),
        (get_args(&csv, &out, &[]), "its columns: name, link"),
        (
            vec!["get", "-i", path(&list), "-o", path(&out), "--rate", "fast"],
            "--rate",
        ),
    ];
    for (args, hint) in cases {
        let result = run(&args);
        let text = stderr(&result);
        assert_eq!(result.status.code(), Some(2), "{args:?}: {text}");
        assert!(text.contains(hint), "{args:?}: wanted {hint:?} in {text}");
        assert!(!text.contains("line 0"), "{text}");
        assert!(!out.exists(), "{args:?} created the output directory");
    }
}

#[test]
fn the_format_is_read_off_the_content_when_the_name_says_nothing() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    // JSONL in a .txt file, CSV in a .txt file, JSONL on standard input.
    let jsonl = tmp.path().join("posts.txt");
    std::fs::write(
        &jsonl,
        format!(
            "{{\"url\": \"{}\", \"path\": \"j/one.bin\"}}\n",
            server.url("j1.bin", 100, "")
        ),
    )
    .unwrap();
    let csv = tmp.path().join("table.txt");
    std::fs::write(
        &csv,
        format!("id,url,path\n7,{},c/seven.bin\n", server.url("c7.bin", 100, "")),
    )
    .unwrap();
    let out = tmp.path().join("out");
    for list in [&jsonl, &csv] {
        let result = run(&get_args(list, &out, &["--progress", "none"]));
        assert_eq!(result.status.code(), Some(0), "{}", stderr(&result));
    }
    let mut piped = haul();
    piped.args(["get", "-i", "-", "-o", path(&out), "--progress", "none"]);
    let line = format!(
        "{{\"url\": \"{}\", \"path\": \"s/in.bin\"}}\n",
        server.url("s.bin", 100, "")
    );
    let result = run_command(piped, Some(line.into_bytes()));
    assert_eq!(result.status.code(), Some(0), "{}", stderr(&result));
    for (file, name) in [
        ("j/one.bin", "j1.bin"),
        ("c/seven.bin", "c7.bin"),
        ("s/in.bin", "s.bin"),
    ] {
        assert_eq!(
            sha256_hex(&std::fs::read(out.join(file)).unwrap()),
            sha256_hex(&body_for(name, 100)),
            "{file}"
        );
    }

    // An empty manifest says so; no -o says where the files go.
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "# nothing yet\n\n").unwrap();
    let mut here = haul();
    here.current_dir(tmp.path())
        .args(["get", "-i", path(&empty), "--progress", "none"]);
    let result = run_command(here, None);
    let text = stderr(&result);
    assert_eq!(result.status.code(), Some(0), "{text}");
    assert!(text.contains("lists no URLs"), "{text}");
    assert!(text.contains("saving into the current directory"), "{text}");
}

#[test]
fn failed_jobs_run_again_as_they_were_given() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    // A job that fails once (404), with what it needs: a token in its URL, a Referer, a
    // secret header, size and sha256, an id and a path. It is line 3 of the manifest.
    let url = format!("{}&token=t0ken-123", server.url("post7.bin", 500, "status=404&times=1"));
    let line = serde_json::json!({
        "url": url,
        "id": "post-7",
        "path": "posts/seven.bin",
        "size": 500,
        "sha256": sha256_hex(&body_for("post7.bin", 500)),
        "headers": { "Referer": "https://site.example/post/7", "Authorization": "Bearer s3cret" },
    });
    let ok = serde_json::json!({ "url": server.url("fine.bin", 10, "") });
    let list = tmp.path().join("posts.jsonl");
    std::fs::write(&list, format!("# posts\n{ok}\n{line}\n")).unwrap();
    let out = tmp.path().join("out");
    let first = run(&get_args(&list, &out, &["--progress", "none"]));
    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));

    let failed = run(&["failed", path(&out)]);
    let text = String::from_utf8_lossy(&failed.stdout).into_owned();
    let spec: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(spec["url"], url.as_str(), "the real URL, token included");
    assert_eq!(spec["id"], "post-7");
    assert_eq!(spec["path"], "posts/seven.bin");
    assert_eq!(spec["size"], 500);
    assert_eq!(spec["line"], 3);
    assert_eq!(spec["headers"]["Referer"], "https://site.example/post/7");
    assert!(!text.contains("s3cret"), "secret headers are not stored: {text}");

    let report = tmp.path().join("retry.jsonl");
    let retry = run(&[
        "get",
        "-o",
        path(&out),
        "--retry-failed",
        "--progress",
        "none",
        "--report",
        path(&report),
    ]);
    assert_eq!(retry.status.code(), Some(0), "{}", stderr(&retry));
    let seen = server.headers_seen();
    let (_, headers) = seen.iter().rev().find(|(p, _)| p == "/f/post7.bin").unwrap();
    assert_eq!(headers.get("referer").unwrap(), "https://site.example/post/7");
    let row: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&report).unwrap().trim()).unwrap();
    assert_eq!(row["line"], 3, "reported under its original line");
    assert_eq!(row["verified"], true, "size and sha256 were checked");
    assert_eq!(row["id"], "post-7");
    assert_eq!(
        sha256_hex(&std::fs::read(out.join("posts/seven.bin")).unwrap()),
        sha256_hex(&body_for("post7.bin", 500))
    );
}

#[test]
fn sigterm_exits_143_and_quiet_still_shows_failures() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let list = manifest(tmp.path(), &[server.url("slow.bin", 4_000_000, "rate=1000000")]);
    let child = haul()
        .args(get_args(&list, &out, &["--progress", "none"]))
        .spawn()
        .unwrap();
    signal_when_flowing(&child, &haul::store::part_path(&out, "slow.bin"), 0, "-TERM");
    let result = child.wait_with_output().unwrap();
    assert_eq!(result.status.code(), Some(143));
    assert!(!out.join("slow.bin").exists());

    let gone = manifest(tmp.path(), &[server.url("gone.bin", 10, "status=404")]);
    let quiet = run(&get_args(&gone, &out, &["-q"]));
    let text = stderr(&quiet);
    assert_eq!(quiet.status.code(), Some(1));
    assert!(text.contains("failed:") && text.contains("gone.bin"), "{text}");
    assert!(!text.contains("done,"), "no summary with --quiet: {text}");
}

#[test]
fn query_style_urls_get_distinct_names_and_templates_name_from_fields() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    // `/f/media?size=100&id=N`: the query names the file.
    let urls: Vec<String> = (1..=3).map(|i| server.url("media", 100, &format!("id={i}"))).collect();
    let list = manifest(tmp.path(), &urls);
    for extra in [&[][..], &["--content-disposition"][..]] {
        let out = tmp.path().join(format!("out{}", extra.len()));
        let mut args = vec!["--progress", "none"];
        args.extend_from_slice(extra);
        let result = run(&get_args(&list, &out, &args));
        assert_eq!(result.status.code(), Some(0), "{extra:?}: {}", stderr(&result));
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".haul")
            .collect();
        names.sort();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("media-") && n.len() == "media-".len() + 8),
            "{names:?}"
        );
        // Stable: a second run skips all three as archived and writes no new names.
        let again = run(&get_args(&list, &out, &args));
        assert!(stderr(&again).contains("3 skipped"), "{}", stderr(&again));
    }

    // --name from the manifest's fields.
    let posts = tmp.path().join("posts.jsonl");
    std::fs::write(
        &posts,
        (1..=2)
            .map(|i| {
                format!(
                    "{{\"id\": \"post{i}\", \"url\": \"{}\"}}\n",
                    server.url(&format!("img{i}.jpg"), 50, "")
                )
            })
            .collect::<String>(),
    )
    .unwrap();
    let out = tmp.path().join("named");
    let result = run(&get_args(
        &posts,
        &out,
        &["--progress", "none", "--name", "{host}/{id}{ext}"],
    ));
    assert_eq!(result.status.code(), Some(0), "{}", stderr(&result));
    let host = server.base().trim_start_matches("http://").replace(':', "_");
    for i in 1..=2 {
        assert_eq!(
            sha256_hex(&std::fs::read(out.join(&host).join(format!("post{i}.jpg"))).unwrap()),
            sha256_hex(&body_for(&format!("img{i}.jpg"), 50))
        );
    }
    let bad = run(&get_args(&posts, &out, &["--name", "{title}"]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("unknown field {title}"), "{}", stderr(&bad));
}

#[test]
fn verify_finds_missing_and_corrupt_files_and_the_next_run_replaces_them() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..5).map(|i| format!("v{i}.bin")).collect();
    let urls: Vec<String> = names.iter().map(|n| server.url(n, 5000, "")).collect();
    let list = manifest(tmp.path(), &urls);
    let out = tmp.path().join("out");
    let digest = ["--progress", "none", "--digest", "blake3"];
    assert!(run(&get_args(&list, &out, &digest)).status.success());
    // Deleted, truncated, one byte changed (same size).
    std::fs::remove_file(out.join("v0.bin")).unwrap();
    std::fs::write(out.join("v1.bin"), &body_for("v1.bin", 5000)[..100]).unwrap();
    let mut changed = body_for("v2.bin", 5000);
    changed[10] ^= 0xff;
    std::fs::write(out.join("v2.bin"), &changed).unwrap();

    // A rerun notices the deleted file by itself (one stat per archived job).
    let rerun = run(&get_args(&list, &out, &["--progress", "none"]));
    let text = stderr(&rerun);
    assert!(rerun.status.success(), "{text}");
    assert!(text.contains("1 archived file(s) were missing or corrupt"), "{text}");
    assert_eq!(server.hits("/f/v0.bin"), 2);

    let quick = run(&["verify", path(&out)]);
    let report = String::from_utf8_lossy(&quick.stdout).into_owned();
    assert_eq!(quick.status.code(), Some(1), "{report}");
    assert!(report.contains("v1.bin: corrupt: 100 bytes, 5000 recorded"), "{report}");
    assert!(!report.contains("v2.bin"), "same size: only --full sees it: {report}");
    let full = run(&["verify", path(&out), "--full"]);
    let report = String::from_utf8_lossy(&full.stdout).into_owned();
    assert!(report.contains("v2.bin: corrupt: its BLAKE3 differs"), "{report}");

    // The next run fetches both again and replaces them (--on-exists skip would keep them).
    let fix = run(&get_args(&list, &out, &digest));
    assert!(fix.status.success(), "{}", stderr(&fix));
    for name in &names {
        assert_eq!(
            sha256_hex(&std::fs::read(out.join(name)).unwrap()),
            sha256_hex(&body_for(name, 5000)),
            "{name}"
        );
    }
    assert_eq!(
        (
            server.hits("/f/v1.bin"),
            server.hits("/f/v2.bin"),
            server.hits("/f/v3.bin")
        ),
        (2, 2, 1)
    );
    let clean = run(&["verify", path(&out), "--full"]);
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
}

#[test]
fn a_host_that_fails_every_job_is_reported_once() {
    let tmp = tempfile::tempdir().unwrap();
    // Port 9 on loopback: nothing listens, every connection is refused.
    let urls: Vec<String> = (0..12).map(|i| format!("http://127.0.0.1:9/f{i}.bin")).collect();
    let list = manifest(tmp.path(), &urls);
    let out = tmp.path().join("out");
    let report = tmp.path().join("report.jsonl");
    let result = run(&get_args(
        &list,
        &out,
        &["--retries", "0", "--progress", "none", "--report", path(&report)],
    ));
    let text = stderr(&result);
    assert_eq!(result.status.code(), Some(1), "{text}");
    assert_eq!(text.matches("failed: line").count(), 1, "printed once: {text}");
    assert!(text.contains("failed 12 × connect on 127.0.0.1:9"), "{text}");
    let rows = std::fs::read_to_string(&report).unwrap();
    assert_eq!(rows.lines().count(), 12, "every job has its report line");
}

#[test]
fn dry_run_says_what_would_happen_without_a_request_or_a_change() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let done = server.url("done.jpg", 10, "");
    assert!(
        run(&["get", &done, "-o", path(&out), "--progress", "none"])
            .status
            .success()
    );
    let hits = server.total_hits();
    let list = tmp.path().join("list.jsonl");
    std::fs::write(
        &list,
        format!(
            "{{\"url\": \"{done}\"}}\n{{\"url\": \"{}\"}}\n{{\"url\": \"{}\", \"path\": \"../escape.jpg\"}}\nnot json\n",
            server.url("new.jpg", 10, ""),
            server.url("x.jpg", 10, "")
        ),
    )
    .unwrap();
    let result = run(&get_args(&list, &out, &["--dry-run"]));
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(
        (lines[0][0], lines[0][2], lines[0][3]),
        ("skip", "done.jpg", "archived")
    );
    assert_eq!((lines[1][0], lines[1][2]), ("fetch", "new.jpg"));
    assert_eq!(lines[2][0], "refuse");
    assert_eq!((lines[3][0], lines[3][1]), ("bad", "4"));
    assert_eq!(result.status.code(), Some(1));
    assert!(stderr(&result).contains("1 to fetch, 1 to skip, 1 refused, 1 bad lines"));
    assert_eq!(server.total_hits(), hits, "no request");
    assert!(!out.join("new.jpg").exists());
    // A fresh directory is not even created.
    let fresh = tmp.path().join("fresh");
    let result = run(&get_args(&list, &fresh, &["--dry-run"]));
    assert_eq!(result.status.code(), Some(1));
    assert!(!fresh.exists());
}

#[test]
fn verbose_logs_show_requests_and_decisions_without_secrets() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let signed = format!("{}&X-Amz-Signature=s1gnature", server.url("a.bin", 100, ""));
    let busy = server.url("busy.bin", 100, "status=503&retry_after=0&times=1");
    let list = manifest(tmp.path(), &[signed, busy]);
    let out = tmp.path().join("out");
    let secret = ["-H", "Authorization: Bearer t0psecret"];
    let result = run(&get_args(
        &list,
        &out,
        &[&["-vv", "--progress", "none"][..], &secret[..]].concat(),
    ));
    let text = stderr(&result);
    assert!(result.status.success(), "{text}");
    assert!(
        text.contains("request") && text.contains("response") && text.contains("status=200"),
        "{text}"
    );
    assert!(text.contains("retry"), "the 503 retry decision is logged: {text}");
    assert!(text.contains("X-Amz-Signature=***"), "{text}");
    for secret in ["s1gnature", "t0psecret"] {
        assert!(!text.contains(secret), "{secret} in the logs: {text}");
    }
    // --log-file: JSON lines in the file, nothing extra on stderr.
    let log = tmp.path().join("haul.log");
    let out2 = tmp.path().join("out2");
    let result = run(&get_args(
        &list,
        &out2,
        &["--log-file", path(&log), "--progress", "none"],
    ));
    assert!(result.status.success());
    assert!(!stderr(&result).contains("request"));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "response" && l["fields"]["status"] == 200),
        "{lines:?}"
    );
}

#[test]
fn help_is_grouped_and_completions_and_man_page_come_from_the_same_definitions() {
    let help = String::from_utf8_lossy(&run(&["get", "--help"]).stdout).into_owned();
    for heading in [
        "Input:",
        "Output:",
        "Politeness:",
        "Failures and limits:",
        "HTTP:",
        "State:",
        "Display and logs:",
        "Examples:",
        "Exit codes:",
    ] {
        assert!(help.contains(heading), "{heading} missing from get --help");
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        assert!(script.status.success());
        assert!(
            String::from_utf8_lossy(&script.stdout).contains("--per-host"),
            "{shell}"
        );
    }
    let man = String::from_utf8_lossy(&run(&["man"]).stdout).into_owned();
    assert!(
        man.starts_with(".ie") || man.contains(".TH haul"),
        "{}",
        &man[..man.len().min(200)]
    );
    assert!(man.contains("politely"), "the description");
}

#[test]
fn the_total_is_known_from_the_start_when_the_manifest_is_a_file() {
    use std::io::BufRead as _;
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    // 3,000 jobs at 50 ms each over 2 connections: the reader is far from the end at 1 s.
    let urls: Vec<String> = (0..3000)
        .map(|i| server.url(&format!("t{i}.bin"), 10, "delay=50"))
        .collect();
    let list = manifest(tmp.path(), &urls);
    let out = tmp.path().join("out");
    let mut child = haul()
        .args(get_args(&list, &out, &["-j", "2", "--progress", "json"]))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = None;
    for line in stderr.lines().take(50) {
        let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if event["type"] == "progress" {
            first = Some(event);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let first = first.expect("a progress line");
    assert!(first["read"].as_u64().unwrap() < 3000, "{first}");
    assert_eq!(first["total"], 3000, "counted ahead: {first}");
    assert_eq!(first["total_exact"], false);
}
