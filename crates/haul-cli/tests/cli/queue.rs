//! The shared queue: `haul enqueue`, `haul work` processes against a real PostgreSQL (started
//! here, stopped by its PID), nginx and the fault server.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use haul_test::{FaultServer, Nginx, Postgres, body_for, sha256_hex};

use super::{haul, manifest, path, run_command, runtime, stderr, wait_for};

/// A PostgreSQL with one database for this test.
fn database() -> (Postgres, String) {
    let pg = Postgres::start();
    let url = pg.database("haul");
    (pg, url)
}

fn with_queue(url: &str, args: &[&str]) -> Command {
    let mut command = haul();
    command.env("HAUL_QUEUE", url).args(args);
    command
}

fn run_q(url: &str, args: &[&str]) -> Output {
    run_command(with_queue(url, args), None)
}

fn spawn_worker(url: &str, out: &Path, extra: &[&str]) -> Child {
    let mut args = vec!["work", "-o", path(out), "--progress", "none"];
    args.extend_from_slice(extra);
    with_queue(url, &args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a worker")
}

/// Waits for a worker, at most `limit` (killed and failed past it).
fn finish(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.expect("wait for the worker"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("a worker did not end within {limit:?}");
        }
    }
}

fn signal(child: &Child, signal: &str) {
    assert!(
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

/// Counts of the queue's jobs by state.
fn states(pg: &Postgres, url: &str) -> HashMap<String, u64> {
    pg.query(url, "SELECT state, count(*) FROM haul_job_states GROUP BY state")
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(s, n)| (s.to_owned(), n.parse().unwrap()))
        .collect()
}

fn count(pg: &Postgres, url: &str, sql: &str) -> u64 {
    pg.query(url, sql).parse().unwrap()
}

/// Waits (at most 30 s) until at least `n` jobs are in `state`; fails with `why` if none came.
fn wait_for_state(pg: &Postgres, url: &str, state: &str, n: u64, why: &str) {
    let sql = format!("SELECT count(*) FROM haul_job_states WHERE state = '{state}'");
    assert!(wait_for(Duration::from_secs(30), || count(pg, url, &sql) >= n), "{why}");
}

/// Files named `name` with the fault server's bodies: `(url, name, sha256)`.
fn fault_files(server: &FaultServer, prefix: &str, n: usize, size: u64, faults: &str) -> Vec<(String, String, String)> {
    (0..n)
        .map(|i| {
            let name = format!("{prefix}{i:03}.bin");
            let url = server.url(&name, size, faults);
            let sha = sha256_hex(&body_for(&name, size));
            (url, name, sha)
        })
        .collect()
}

fn assert_files(out: &Path, files: &[(String, String, String)]) {
    for (_, name, sha) in files {
        let body = std::fs::read(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&sha256_hex(&body), sha, "{name}");
    }
}

fn enqueue(url: &str, dir: &Path, files: &[(String, String, String)]) {
    let lines: Vec<String> = files.iter().map(|(u, _, _)| u.clone()).collect();
    enqueue_lines(url, dir, &lines);
}

/// Enqueues a manifest of `lines` written in `dir`.
fn enqueue_lines(url: &str, dir: &Path, lines: &[String]) {
    let list = manifest(dir, lines);
    let added = run_q(url, &["enqueue", "-i", path(&list)]);
    assert_eq!(added.status.code(), Some(0), "{}", stderr(&added));
}

#[test]
fn enqueue_is_idempotent_and_max_attempts_fails_a_job_that_kills_its_workers() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let (pg, url) = database();
    let tmp = tempfile::tempdir().unwrap();
    let lines = vec![
        server.url("a.bin", 1000, ""),
        server.url("b.bin", 2000, ""),
        server.url("c.bin", 3000, ""),
        server.url("d.bin", 4000, ""),
        server.url("a.bin", 1000, ""),
        "not a url".to_owned(),
    ];
    let list = manifest(tmp.path(), &lines);
    let first = run_q(&url, &["enqueue", "-i", path(&list)]);
    assert_eq!(first.status.code(), Some(1), "a bad line: exit 1");
    let text = stderr(&first);
    assert!(text.contains("4 new, 1 duplicate, 1 bad"), "{text}");
    assert!(text.contains("bad line 6"), "{text}");
    let again = run_q(&url, &["enqueue", "-i", path(&list)]);
    assert!(
        stderr(&again).contains("0 new, 5 duplicate, 1 bad"),
        "{}",
        stderr(&again)
    );
    assert_eq!(count(&pg, &url, "SELECT count(*) FROM haul_jobs"), 4);
    // One host's four jobs make one chunk; the second enqueue's chunk, with no new job, is gone.
    assert_eq!(count(&pg, &url, "SELECT count(*) FROM haul_chunks"), 1);

    // a.bin was claimed three times by workers that died with it (after the first death, its
    // chunk was split: it is alone in one): the next claim fails it, and only it.
    let _ = pg.query(
        &url,
        "WITH moved AS (UPDATE haul_jobs SET chunk = nextval('haul_chunk_ids') << 20 WHERE id LIKE '%/a.bin%' \
             RETURNING name, chunk, host) \
         INSERT INTO haul_chunks (name, chunk, host, jobs, state, attempt, owner, lease_until) \
         SELECT name, chunk, host, 1, 'running', 3, 999, now() - interval '1 second' FROM moved",
    );
    let out = tmp.path().join("out");
    let work = run_q(
        &url,
        &["work", "-o", path(&out), "--progress", "none", "--max-attempts", "3"],
    );
    assert_eq!(work.status.code(), Some(0), "{}", stderr(&work));
    let states = states(&pg, &url);
    assert_eq!(states.get("done"), Some(&3), "{states:?}");
    assert_eq!(states.get("failed"), Some(&1), "{states:?}");
    assert!(!out.join("a.bin").exists());
    assert_eq!(server.hits("/f/a.bin"), 0);
    let reason = pg.query(
        &url,
        "SELECT reason || ': ' || error FROM haul_results WHERE state = 'failed'",
    );
    assert!(reason.starts_with("worker lost: claimed 3 times"), "{reason}");

    // `haul failed` prints it as a manifest line; --retry-failed runs it again.
    let failed = run_q(&url, &["failed", "--job", "default"]);
    let failed_text = String::from_utf8_lossy(&failed.stdout);
    assert_eq!(failed_text.lines().count(), 1, "{failed_text}");
    assert!(failed_text.contains("a.bin"), "{failed_text}");
    let retry = run_q(
        &url,
        &["work", "-o", path(&out), "--progress", "none", "--retry-failed"],
    );
    assert_eq!(retry.status.code(), Some(0), "{}", stderr(&retry));
    assert_eq!(
        sha256_hex(&std::fs::read(out.join("a.bin")).unwrap()),
        sha256_hex(&body_for("a.bin", 1000))
    );
    assert_eq!(states_done(&pg, &url), 4);
    assert_eq!(server.hits("/f/b.bin"), 1, "done jobs are not fetched again");
}

/// A run with `--retry-failed` ended well, said it queued one failed job again, and a.bin (of
/// [`two_jobs`]) is in `out`.
fn assert_retried_a(run: &Output, out: &Path) {
    assert_eq!(run.status.code(), Some(0), "{}", stderr(run));
    assert!(stderr(run).contains("1 failed jobs queued again"), "{}", stderr(run));
    assert_eq!(
        sha256_hex(&std::fs::read(out.join("a.bin")).unwrap()),
        sha256_hex(&body_for("a.bin", 1000))
    );
}

/// A queue holding two jobs of the fault server in one chunk, a.bin (1,000 bytes) and b.bin
/// (2,000): the server's runtime (first, so dropped last), the server, the database and its
/// URL, and a directory.
fn two_jobs() -> (
    tokio::runtime::Runtime,
    FaultServer,
    Postgres,
    String,
    tempfile::TempDir,
) {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let (pg, url) = database();
    let tmp = tempfile::tempdir().unwrap();
    enqueue_lines(
        &url,
        tmp.path(),
        &[server.url("a.bin", 1000, ""), server.url("b.bin", 2000, "")],
    );
    (rt, server, pg, url, tmp)
}

/// A job that failed in a chunk whose worker was then lost keeps the chunk's number when the
/// chunk is split (only the unfinished jobs move); `--retry-failed` must still put it back in
/// the queue, not leave it queued under a chunk that no longer exists.
#[test]
fn retry_failed_requeues_a_failure_from_a_chunk_that_was_split() {
    let (_rt, server, pg, url, tmp) = two_jobs();
    // A worker (999) claimed the chunk, recorded a.bin as failed, and died holding b.bin.
    let _ = pg.query(
        &url,
        "WITH lost AS (UPDATE haul_chunks SET state = 'running', attempt = 1, owner = 999, \
             lease_until = now() - interval '1 second' RETURNING name, chunk) \
         INSERT INTO haul_results (name, chunk, id, state, attempt, owner, reason, error) \
         SELECT j.name, j.chunk, j.id, 'failed', 1, 999, 'http', 'HTTP 503' \
         FROM haul_jobs j JOIN lost USING (name, chunk) WHERE j.id LIKE '%/a.bin%'",
    );
    let out = tmp.path().join("out");
    let work = run_q(&url, &["work", "-o", path(&out), "--progress", "none"]);
    assert_eq!(work.status.code(), Some(0), "{}", stderr(&work));
    assert!(out.join("b.bin").exists(), "the dead worker's unfinished job was done");
    assert_eq!(server.hits("/f/a.bin"), 0);
    assert_eq!(states(&pg, &url).get("failed"), Some(&1));

    let retry = run_q(
        &url,
        &["work", "-o", path(&out), "--progress", "none", "--retry-failed"],
    );
    assert_retried_a(&retry, &out);
    assert_eq!(states_done(&pg, &url), 2);
    assert_eq!(server.hits("/f/b.bin"), 1);
}

/// `--retry-failed` while another worker still holds the failed job's chunk: the job moves to a
/// chunk of its own and is done again, and the holder, which closes its chunk as done (it
/// knows nothing of the retry), strands nothing.
#[test]
fn retry_failed_requeues_a_failure_from_a_chunk_still_held() {
    let (_rt, server, pg, url, tmp) = two_jobs();
    // Worker 7 holds the chunk (for a minute yet) and recorded a.bin as failed.
    let _ = pg.query(
        &url,
        "UPDATE haul_chunks SET state = 'running', attempt = 1, owner = 7, lease_until = now() + interval '60 s'; \
         SELECT haul_record('default', 7, array_agg(id), array_agg(chunk), ARRAY[1], ARRAY['failed'], \
                ARRAY[NULL::TEXT], ARRAY[NULL::BIGINT], ARRAY[NULL::TEXT], ARRAY[NULL::TEXT], ARRAY[false], \
                ARRAY[503], ARRAY['http'], ARRAY['HTTP 503'], '{}'::BIGINT[], '{}'::INTEGER[], '{}'::BOOLEAN[]) \
         FROM haul_jobs WHERE id LIKE '%/a.bin%'",
    );
    assert_eq!(states(&pg, &url).get("failed"), Some(&1));
    let out = tmp.path().join("out");
    let worker = spawn_worker(&url, &out, &["--retry-failed"]);
    wait_for_state(&pg, &url, "done", 1, "the retried job was done by the new worker");
    // Worker 7 ends b.bin and closes its chunk: every job it was handed has a result.
    let written = pg.query(
        &url,
        "SELECT haul_record('default', 7, array_agg(id), array_agg(chunk), ARRAY[1], ARRAY['done'], \
                ARRAY['b.bin'], ARRAY[2000::BIGINT], ARRAY[NULL::TEXT], ARRAY[NULL::TEXT], ARRAY[false], \
                ARRAY[200], ARRAY[NULL::TEXT], ARRAY[NULL::TEXT], array_agg(chunk), ARRAY[1], ARRAY[false]) \
         FROM haul_jobs WHERE id LIKE '%/b.bin%'",
    );
    assert_eq!(written, "1");
    let work = finish(worker, Duration::from_secs(60));
    assert_retried_a(&work, &out);
    assert_eq!(server.hits("/f/a.bin"), 1);
    assert_eq!(server.hits("/f/b.bin"), 0, "b.bin was worker 7's");
    assert_eq!(states_done(&pg, &url), 2, "{:?}", states(&pg, &url));
    assert_eq!(
        count(&pg, &url, "SELECT count(*) FROM haul_chunks WHERE state <> 'done'"),
        0
    );
}

/// A queue whose tables an earlier haul made (jobs rows holding their results) is refused with
/// a message that says what to do, and left as it is.
#[test]
fn a_queue_made_by_an_earlier_haul_is_refused_and_left_alone() {
    let (pg, url) = database();
    let tmp = tempfile::tempdir().unwrap();
    let _ = pg.query(
        &url,
        "CREATE TABLE haul_jobs (name TEXT, id TEXT, chunk BIGINT, state TEXT, PRIMARY KEY (name, id)); \
         INSERT INTO haul_jobs VALUES ('default', 'x', 1, 'queued')",
    );
    let list = manifest(tmp.path(), &["http://127.0.0.1:9/a.bin".to_owned()]);
    let output = run_q(&url, &["enqueue", "-i", path(&list)]);
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let text = stderr(&output);
    assert!(text.contains("made by an older haul"), "{text}");
    assert!(text.contains("enqueue again"), "{text}");
    assert_eq!(count(&pg, &url, "SELECT count(*) FROM haul_jobs"), 1);
    assert_eq!(pg.query(&url, "SELECT to_regclass('haul_results') IS NULL"), "t");
}

/// The tables carry the fingerprint of the schema that made them: a haul with the same schema
/// leaves them as they are, and one with another (a newer haul) lays its schema over them.
#[test]
fn a_queue_of_another_schema_version_is_brought_up_to_date() {
    let (pg, url) = database();
    let tmp = tempfile::tempdir().unwrap();
    enqueue_lines(&url, tmp.path(), &["http://127.0.0.1:9/a.bin".to_owned()]);
    let mark = pg.query(&url, "SELECT obj_description('haul_jobs'::regclass, 'pg_class')");
    assert!(mark.starts_with("haul queue schema "), "{mark}");
    // Made by the same schema: not created again (an index dropped by hand stays dropped).
    let _ = pg.query(&url, "DROP INDEX haul_hosts_cooling");
    let status = run_q(&url, &["status", "--job", "default"]);
    assert!(status.status.success(), "{}", stderr(&status));
    assert_eq!(pg.query(&url, "SELECT to_regclass('haul_hosts_cooling') IS NULL"), "t");
    // Made by another: the schema is laid over the tables, and the jobs stay.
    let _ = pg.query(
        &url,
        "COMMENT ON TABLE haul_jobs IS 'haul queue schema 0000000000000000'",
    );
    let status = run_q(&url, &["status", "--job", "default"]);
    assert!(status.status.success(), "{}", stderr(&status));
    assert_eq!(
        pg.query(&url, "SELECT to_regclass('haul_hosts_cooling') IS NOT NULL"),
        "t"
    );
    assert_eq!(
        pg.query(&url, "SELECT obj_description('haul_jobs'::regclass, 'pg_class')"),
        mark
    );
    assert_eq!(
        count(&pg, &url, "SELECT count(*) FROM haul_job_states WHERE state = 'queued'"),
        1
    );
}

/// A call of `haul_record` by worker 7 under its first claim: job `id` done at `path`, with
/// `size` bytes; no chunk closed.
fn record_done(id: &str, path: &str, size: u64) -> String {
    format!(
        "haul_record('default', 7, ARRAY['{id}'], ARRAY[(SELECT chunk FROM haul_jobs WHERE id = '{id}')], \
         ARRAY[1], ARRAY['done'], ARRAY['{path}'], ARRAY[{size}::BIGINT], ARRAY[NULL::TEXT], ARRAY[NULL::TEXT], \
         ARRAY[false], ARRAY[200], ARRAY[NULL::TEXT], ARRAY[NULL::TEXT], '{{}}'::BIGINT[], '{{}}'::INTEGER[], \
         '{{}}'::BOOLEAN[])"
    )
}

/// A batch of results sent again (the answer to its commit was lost with the connection) is
/// written once: the second time changes nothing, and fails nothing.
#[test]
fn a_batch_of_results_sent_twice_is_recorded_once() {
    let (pg, url) = database();
    let tmp = tempfile::tempdir().unwrap();
    let lines = [
        "http://127.0.0.1:9/a.bin".to_owned(),
        "http://127.0.0.1:9/b.bin".to_owned(),
    ];
    enqueue_lines(&url, tmp.path(), &lines);
    // The jobs' chunk, held by worker 7 under its first claim.
    let _ = pg.query(&url, "UPDATE haul_chunks SET state = 'running', attempt = 1, owner = 7");
    let record = |path: &str| pg.query(&url, &format!("SELECT {}", record_done(&lines[0], path, 5)));
    assert_eq!(record("first"), "1");
    assert_eq!(record("again"), "0", "the second send writes nothing");
    assert_eq!(
        pg.query(&url, "SELECT string_agg(path, ',') FROM haul_results"),
        "first"
    );
    let states = states(&pg, &url);
    assert_eq!(states.get("done"), Some(&1), "{states:?}");
    assert_eq!(states.get("running"), Some(&1), "{states:?}");
}

/// A batch that closes many chunks looks each up once, whatever the statistics say. Taken when
/// no chunk ran (the enqueue's `ANALYZE`), they once made the database count every closed
/// chunk's jobs again for each running one: a product of the two, which ran for tens of
/// seconds in a worker's run and for minutes here. A chunk closed open (a job of it handed
/// back) goes back to the queue; the others are done.
#[test]
fn a_batch_closing_many_chunks_looks_each_up_once() {
    let (pg, url) = database();
    let tmp = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..32_000).map(|i| format!("http://127.0.0.1:9/f{i:05}.bin")).collect();
    enqueue_lines(&url, tmp.path(), &lines);
    // Every chunk held by worker 7, with the statistics of the enqueue (none running).
    let _ = pg.query(
        &url,
        "ALTER TABLE haul_chunks SET (autovacuum_enabled = false); \
         UPDATE haul_chunks SET state = 'running', attempt = 1, owner = 7",
    );
    // Every result and every close in one batch; the database gives up on it after 10 s.
    let written = pg.query(
        &url,
        "SET statement_timeout = '10s'; \
         SELECT haul_record('default', 7, array_agg(id), array_agg(chunk), array_agg(1), array_agg('done'::TEXT), \
                array_agg(NULL::TEXT), array_agg(NULL::BIGINT), array_agg(NULL::TEXT), array_agg(NULL::TEXT), \
                array_agg(false), array_agg(200), array_agg(NULL::TEXT), array_agg(NULL::TEXT), \
                (SELECT array_agg(chunk ORDER BY chunk) FROM haul_chunks), (SELECT array_agg(1) FROM haul_chunks), \
                (SELECT array_agg(n % 2 = 1 ORDER BY chunk) \
                 FROM (SELECT chunk, row_number() OVER (ORDER BY chunk) AS n FROM haul_chunks) c)) \
         FROM haul_jobs",
    );
    assert_eq!(written, "32000");
    assert_eq!(
        pg.query(
            &url,
            "SELECT string_agg(format('%s %s %s', state, released, n), ',' ORDER BY state) \
             FROM (SELECT state, released, count(*) AS n FROM haul_chunks GROUP BY state, released) c"
        ),
        "done 0 1000,queued 1 1000",
        "every other chunk was closed open: back in the queue, released once"
    );
    assert_eq!(
        count(&pg, &url, "SELECT count(*) FROM haul_chunks WHERE owner IS NOT NULL"),
        0
    );
    assert_eq!(states(&pg, &url).get("done"), Some(&32_000));
}

fn states_done(pg: &Postgres, url: &str) -> u64 {
    states(pg, url).get("done").copied().unwrap_or(0)
}

#[test]
fn three_workers_share_a_queue_and_fetch_each_file_once() {
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let mut expected = Vec::new();
    for i in 0..600u64 {
        let name = format!("q{i:04}.bin");
        let body = body_for(&name, 1_000 + (i * 7_919) % 20_000);
        std::fs::write(www.join(&name), &body).unwrap();
        expected.push((name, sha256_hex(&body)));
    }
    let nginx = Nginx::start(&www, &tmp.path().join("nginx"));
    let (pg, url) = database();
    let lines: Vec<String> = expected.iter().map(|(n, _)| format!("{}/{n}", nginx.base())).collect();
    let list = manifest(tmp.path(), &lines);
    let added = run_q(&url, &["enqueue", "-i", path(&list), "--job", "fleet"]);
    assert!(stderr(&added).contains("600 new"), "{}", stderr(&added));
    let out = tmp.path().join("shared");
    let workers: Vec<Child> = (0..3)
        .map(|_| spawn_worker(&url, &out, &["--job", "fleet", "-j", "4"]))
        .collect();
    for worker in workers {
        let output = finish(worker, Duration::from_secs(120));
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    for (name, sha) in &expected {
        assert_eq!(&sha256_hex(&std::fs::read(out.join(name)).unwrap()), sha, "{name}");
    }
    // One successful GET per file, whichever worker made it.
    let mut gets = HashMap::<String, usize>::new();
    for line in nginx.access_log() {
        if line.contains("\"GET /") && line.contains("\" 200 ") {
            let name = line.split_whitespace().find_map(|w| w.strip_prefix('/')).unwrap();
            *gets.entry(name.to_owned()).or_default() += 1;
        }
    }
    assert_eq!(gets.len(), 600);
    assert!(gets.values().all(|&n| n == 1), "a file was fetched twice");
    assert_eq!(
        count(
            &pg,
            &url,
            "SELECT count(*) FROM haul_job_states WHERE name = 'fleet' AND state = 'done' AND attempt = 1"
        ),
        600
    );
    let status = run_q(&url, &["status", "--job", "fleet", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["states"][0]["state"], "done");
    assert_eq!(json["states"][0]["jobs"], 600);
    let workers = json["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    assert!(workers.iter().all(|w| w["state"] == "stopped"), "{workers:?}");
    // No temporary file is left behind.
    let parts = std::fs::read_dir(out.join(".haul/parts")).unwrap().count();
    assert_eq!(parts, 0);
}

#[test]
fn a_killed_workers_jobs_are_reclaimed_after_its_lease() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let (pg, url) = database();
    let tmp = tempfile::tempdir().unwrap();
    // 600 KB at 1.2 MB/s: half a second each, and written to a part file as it arrives (in
    // blocks of 256 KiB), so the killed worker leaves part files behind.
    let files = fault_files(&server, "k", 24, 600_000, "rate=1200000");
    enqueue(&url, tmp.path(), &files);
    let out = tmp.path().join("out");
    let doomed = spawn_worker(&url, &out, &["-j", "4", "--lease", "2s"]);
    wait_for_state(&pg, &url, "done", 2, "the first worker finished nothing");
    // Killed mid-transfer: with part files on disk (a result recorded quickly could otherwise
    // have the kill land between two files, before the next ones wrote a byte).
    let parts_dir = out.join(".haul/parts");
    let has_parts = || std::fs::read_dir(&parts_dir).is_ok_and(|mut d| d.next().is_some());
    assert!(
        wait_for(Duration::from_secs(30), has_parts),
        "the first worker wrote no part file"
    );
    signal(&doomed, "-KILL");
    let _ = finish(doomed, Duration::from_secs(10));
    let held = count(
        &pg,
        &url,
        "SELECT count(*) FROM haul_job_states WHERE state = 'running'",
    );
    assert!(held > 0, "the killed worker held no job");
    let started = Instant::now();
    let rescuer = spawn_worker(&url, &out, &["-j", "8", "--lease", "2s"]);
    let output = finish(rescuer, Duration::from_secs(120));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_files(&out, &files);
    assert_eq!(states_done(&pg, &url), 24);
    // The killed worker's jobs were claimed a second time, once its lease ran out.
    let retaken = count(&pg, &url, "SELECT count(*) FROM haul_job_states WHERE attempt = 2");
    assert_eq!(retaken, held, "only the jobs it held were claimed again");
    assert!(started.elapsed() < Duration::from_secs(60));
    let status = run_q(&url, &["status", "--job", "default"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("dead"), "the killed worker shows as dead: {text}");
    let widest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    assert!(widest <= 80, "a line of the status wraps at 80 columns: {text}");
    // The killed worker's temporary files are gone too (removed once its lease had run out).
    let parts: Vec<_> = std::fs::read_dir(out.join(".haul/parts"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(parts.is_empty(), "{parts:?}");
    assert!(
        stderr(&output).contains("temporary files left by workers that are gone"),
        "{}",
        stderr(&output)
    );
}

/// A worker that lost its lease writes a result while another worker scans for lost chunks:
/// the scan leaves the chunk alone until the result is in, then hands out only the job without
/// one. (Split at once, the job would have gone to a chunk of its own with its result still
/// uncommitted, and been fetched and recorded a second time.)
#[test]
fn a_result_being_written_keeps_its_job_out_of_a_split() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let (pg, url) = database();
    let tmp = tempfile::tempdir().unwrap();
    let files = fault_files(&server, "w", 2, 1_000, "");
    enqueue(&url, tmp.path(), &files);
    // One chunk of both jobs, held by worker 7, whose lease ran out.
    let _ = pg.query(
        &url,
        "UPDATE haul_chunks SET state = 'running', attempt = 1, owner = 7, \
         lease_until = now() - interval '1 minute'",
    );
    // Worker 7 writes the first job's result, in a transaction that commits 3 s later.
    let first = &files[0].0;
    let record = format!(
        "BEGIN; SELECT {}; SELECT pg_sleep(3); COMMIT;",
        record_done(first, "w000.bin", 1_000)
    );
    let mut late = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c", &record])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start psql");
    let deadline = Instant::now() + Duration::from_secs(10);
    while pg.query(&url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3)%' AND state = 'active' AND pid <> pg_backend_pid()") != "1" {
        assert!(Instant::now() < deadline, "the result's transaction did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second worker starts meanwhile: its first claim scans for lost chunks.
    let out = tmp.path().join("out");
    let worker = spawn_worker(&url, &out, &["-j", "2", "--lease", "1s"]);
    let output = finish(worker, Duration::from_secs(60));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(late.wait().unwrap().success(), "the result's transaction failed");
    assert_eq!(server.hits("/f/w000.bin"), 0, "the job with a result was fetched again");
    assert_eq!(server.hits("/f/w001.bin"), 1);
    assert_eq!(
        pg.query(
            &url,
            "SELECT string_agg(format('%s %s %s', path, state, owner), ',' ORDER BY path) FROM haul_results"
        ),
        format!(
            "w000.bin done 7,w001.bin done {}",
            pg.query(&url, "SELECT max(id) FROM haul_workers")
        )
    );
    assert_eq!(states_done(&pg, &url), 2);
}

#[test]
fn a_worker_stalled_past_its_lease_cannot_overwrite_the_takeover() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let (pg, url) = database();
    let tmp = tempfile::tempdir().unwrap();
    // 300 KB at 200 KB/s: a second and a half each.
    let files = fault_files(&server, "s", 8, 300_000, "rate=200000");
    enqueue(&url, tmp.path(), &files);
    let out = tmp.path().join("out");
    let stalled = spawn_worker(&url, &out, &["-j", "2", "--lease", "1s"]);
    wait_for_state(&pg, &url, "running", 2, "the first worker claimed nothing");
    std::thread::sleep(Duration::from_millis(300));
    signal(&stalled, "-STOP");
    std::thread::sleep(Duration::from_millis(1_500));
    let rescuer = spawn_worker(&url, &out, &["-j", "8", "--lease", "10s"]);
    let output = finish(rescuer, Duration::from_secs(120));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_files(&out, &files);
    let rows = "SELECT id, state, attempt, owner, path, size FROM haul_job_states ORDER BY id";
    let before = pg.query(&url, rows);
    assert_eq!(states_done(&pg, &url), 8);
    signal(&stalled, "-CONT");
    let late = finish(stalled, Duration::from_secs(60));
    let text = stderr(&late);
    let refused: u64 = text
        .split(", ")
        .find_map(|part| part.strip_suffix(" refused (lease lost)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refused count: {text}"));
    assert!(refused >= 1, "{text}");
    assert_eq!(pg.query(&url, rows), before, "a late result changed the queue");
    assert_files(&out, &files);
}

#[test]
fn a_postgres_restart_mid_run_loses_nothing() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let (mut pg, url) = database();
    let tmp = tempfile::tempdir().unwrap();
    let files = fault_files(&server, "r", 40, 100_000, "rate=400000");
    enqueue(&url, tmp.path(), &files);
    let out = tmp.path().join("out");
    let metrics = format!("127.0.0.1:{}", super::free_port());
    let worker = spawn_worker(&url, &out, &["-j", "4", "--metrics-addr", &metrics]);
    wait_for_state(&pg, &url, "done", 4, "nothing done");
    // The worker's metrics count the results written to the queue.
    let scrape = super::http_get(&metrics, "/metrics").unwrap_or_default();
    let recorded = scrape
        .lines()
        .find_map(|l| l.strip_prefix("haul_queue_results_total{result=\"recorded\"} "))
        .and_then(|n| n.parse::<f64>().ok());
    assert!(recorded.is_some_and(|n| n >= 1.0), "{scrape}");
    pg.restart();
    let output = finish(worker, Duration::from_secs(120));
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(states_done(&pg, &url), 40);
    assert_files(&out, &files);
}

#[test]
fn a_retry_after_seen_by_one_worker_pauses_the_host_for_all() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let (pg, url) = database();
    let tmp = tempfile::tempdir().unwrap();
    let mut files = vec![(
        server.url("busy.bin", 1000, "status=429&retry_after=3&times=1"),
        "busy.bin".to_owned(),
        sha256_hex(&body_for("busy.bin", 1000)),
    )];
    files.extend(fault_files(&server, "p", 60, 50_000, "rate=250000"));
    enqueue(&url, tmp.path(), &files);
    let out = tmp.path().join("out");
    let workers: Vec<Child> = (0..3).map(|_| spawn_worker(&url, &out, &["-j", "2"])).collect();
    for worker in workers {
        let output = finish(worker, Duration::from_secs(120));
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    assert_files(&out, &files);
    let log = server.log();
    let refused = log.iter().find(|l| l.status == 429).expect("the 429 was served");
    // Requests already under way when the 429 came may arrive a moment later; after the other
    // workers had time to read the pause (a quarter second), none until the deadline.
    let quiet_from = refused.at + Duration::from_millis(800);
    let quiet_to = refused.at + Duration::from_millis(2_900);
    let early: Vec<_> = log.iter().filter(|l| l.at > quiet_from && l.at < quiet_to).collect();
    assert!(early.is_empty(), "requests during the pause: {early:?}");
    assert!(log.iter().any(|l| l.path.contains("busy.bin") && l.status == 200));
    let _ = pg;
}

#[test]
fn sigterm_hands_the_unfinished_jobs_back() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let (pg, url) = database();
    let tmp = tempfile::tempdir().unwrap();
    let files = fault_files(&server, "t", 40, 100_000, "rate=200000");
    enqueue(&url, tmp.path(), &files);
    let out = tmp.path().join("out");
    let worker = spawn_worker(&url, &out, &["-j", "2"]);
    wait_for_state(&pg, &url, "done", 2, "nothing done");
    signal(&worker, "-TERM");
    let output = finish(worker, Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(143), "{}", stderr(&output));
    assert!(stderr(&output).contains(" handed back"), "{}", stderr(&output));
    let states = states(&pg, &url);
    assert_eq!(states.get("running"), None, "no lease is left held: {states:?}");
    assert_eq!(states.values().sum::<u64>(), 40);
    assert!(states.get("queued").copied().unwrap_or(0) > 0, "{states:?}");
    let again = finish(spawn_worker(&url, &out, &["-j", "4"]), Duration::from_secs(120));
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(states_done(&pg, &url), 40);
    assert_files(&out, &files);
}

#[test]
fn per_host_is_a_budget_the_live_workers_share() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let (pg, url) = database();
    let tmp = tempfile::tempdir().unwrap();
    // Each answer waits 100 ms: the requests a worker has open pile up at the server. More jobs
    // than one worker holds at once (its claims stop at 128 of a host).
    let files = fault_files(&server, "h", 300, 2_000, "delay=100");
    enqueue(&url, tmp.path(), &files);
    let out = tmp.path().join("out");
    let flags = ["-j", "8", "--per-host", "4", "--no-adaptive", "--lease", "2s"];
    let first = spawn_worker(&url, &out, &flags);
    wait_for_state(&pg, &url, "done", 4, "nothing done");
    let alone = server.peak_answering();
    let second = spawn_worker(&url, &out, &flags);
    for worker in [first, second] {
        let output = finish(worker, Duration::from_secs(120));
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    assert_files(&out, &files);
    assert_eq!(alone, 4, "one worker alone uses the whole budget");
    assert!(
        server.peak_answering() <= 4,
        "two workers together sent {} requests at once to a host with --per-host 4",
        server.peak_answering()
    );
    let owners = count(&pg, &url, "SELECT count(DISTINCT owner) FROM haul_results");
    assert_eq!(owners, 2, "both workers did some of the jobs");
}

#[test]
fn follow_waits_for_jobs_enqueued_later_until_stopped() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let (pg, url) = database();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    // An empty queue: without --follow a worker would end at once.
    let worker = spawn_worker(&url, &out, &["--follow"]);
    std::thread::sleep(Duration::from_millis(800));
    let files = fault_files(&server, "w", 10, 5_000, "");
    enqueue(&url, tmp.path(), &files);
    wait_for_state(&pg, &url, "done", 10, "the following worker did not take the new jobs");
    assert_files(&out, &files);
    signal(&worker, "-TERM");
    let output = finish(worker, Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(143), "{}", stderr(&output));
    assert!(stderr(&output).contains("10 done"), "{}", stderr(&output));
}

#[test]
fn help_never_shows_the_queue_urls_password() {
    let mut command = haul();
    command
        .env("HAUL_QUEUE", "postgres://haul:s3cret-pw@db.example/haul")
        .args(["work", "--help"]);
    let help = run_command(command, None);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("HAUL_QUEUE"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
}

#[test]
fn get_status_failed_and_retry_with_an_archive_in_postgres() {
    let (pg, url) = database();
    let rt = runtime();
    let server = rt.block_on(async { FaultServer::start().await });
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut lines: Vec<String> = (0..20).map(|i| server.url(&format!("a{i}.bin"), 500, "")).collect();
    lines.push(server.url("missing.bin", 10, "status=404"));
    let list = manifest(dir.path(), &lines);
    let archive = format!("{url}#photos");
    let get = |extra: &[&str]| {
        let mut args = vec![
            "get",
            "-i",
            path(&list),
            "-o",
            path(&out),
            "--archive",
            &archive,
            "--progress",
            "none",
        ];
        args.extend_from_slice(extra);
        run_command(
            {
                let mut c = haul();
                c.args(&args);
                c
            },
            None,
        )
    };
    let first = get(&[]);
    assert_eq!(first.status.code(), Some(1), "{}", stderr(&first));
    let rows = count(
        &pg,
        &url,
        "SELECT count(*) FROM haul_archive WHERE name = 'photos' AND status = 'done'",
    );
    assert_eq!(rows, 20);

    let status = run_command(
        {
            let mut c = haul();
            c.args(["status", &archive]);
            c
        },
        None,
    );
    let shown = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(shown.contains("done: 20 jobs"), "{shown}");
    assert!(shown.contains("http 404"), "{shown}");
    let failed = run_command(
        {
            let mut c = haul();
            c.args(["failed", &archive]);
            c
        },
        None,
    );
    let failed = String::from_utf8_lossy(&failed.stdout).into_owned();
    assert_eq!(failed.lines().count(), 1, "{failed}");
    assert!(failed.contains("missing.bin"), "{failed}");

    // A rerun (from any machine that reaches the database) skips the done jobs.
    let hits = server.total_hits();
    let second = get(&[]);
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert_eq!(server.total_hits() - hits, 1, "only the failed job is asked for again");

    // The archive is locked while a run holds it.
    let held = haul::archive::Archive::open_at(&haul::archive::Location::parse(&archive), false).unwrap();
    let refused = get(&[]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("in use by another haul process"),
        "{}",
        stderr(&refused)
    );
    assert!(!stderr(&refused).contains("password"), "{}", stderr(&refused));
    drop(held);
}

#[test]
fn tls_to_postgres_when_the_url_asks_for_it() {
    // The server takes TCP connections only over TLS (its pg_hba.conf has hostssl lines only).
    let pg = Postgres::start_tls();
    let url = pg.database("haul");
    let ca = pg.ca.clone().expect("the test CA");
    let dir = tempfile::tempdir().unwrap();
    let list = manifest(dir.path(), &["http://127.0.0.1:9/a.bin".to_owned()]);
    let enqueue = |queue: &str| {
        run_command(
            {
                let mut c = haul();
                c.args(["enqueue", "-i", path(&list), "--queue", queue]);
                c
            },
            None,
        )
    };
    let plain = enqueue(&url);
    assert_eq!(plain.status.code(), Some(3), "{}", stderr(&plain));
    assert!(
        stderr(&plain).contains("cannot connect to the queue"),
        "{}",
        stderr(&plain)
    );
    // Verified against the URL's sslrootcert: the job is enqueued over TLS.
    let tls = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    let done = enqueue(&tls);
    assert_eq!(done.status.code(), Some(0), "{}", stderr(&done));
    assert_eq!(count(&pg, &url, "SELECT count(*) FROM haul_jobs"), 1);
    // Without the CA, the server's certificate is refused (never silently trusted).
    let refused = enqueue(&format!("{url}?sslmode=require"));
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("cannot connect to the queue"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(count(&pg, &url, "SELECT count(*) FROM haul_jobs"), 1);
}
