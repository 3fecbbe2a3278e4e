//! One conformance suite for the archive's two backends: the same checks against a SQLite file
//! and against a named archive in a real PostgreSQL (started here, stopped by its PID). Each
//! check goes through the public API the engine and the CLI use: `Archive`, `Journal`,
//! `ArchiveReader`, `mark_stale`, `import_ids`, and a whole engine run with a rerun.

use std::time::Duration;

use haul::archive::{Archive, ArchiveReader, Location, Record, RowStatus, STALE, import_ids};
use haul::{ArchiveMode, Format, JobStatus};
use haul_test::FaultServer;

use crate::support::{config, run};

fn record(id: &str, status: RowStatus, attempts: u32) -> Record {
    Record {
        id: id.into(),
        url: format!("http://h0.example/{id}"),
        path: Some(format!("dir/{id}.bin")),
        size: Some(10),
        sha256: Some(format!("sha-{id}")),
        blake3: Some(format!("b3-{id}")),
        segments: (status == RowStatus::Partial).then(|| "0-5".to_owned()),
        verified: true,
        etag: Some(format!("\"{id}\"")),
        last_modified: Some("Wed, 21 Oct 2015 07:28:00 GMT".into()),
        status,
        http_status: Some(200),
        error_class: None,
        error: None,
        attempts,
        spec: None,
    }
}

fn failed(id: &str, host: &str, http: Option<u16>, class: &str, spec: Option<&str>) -> Record {
    Record {
        url: format!("http://{host}/{id}"),
        path: None,
        size: None,
        sha256: None,
        blake3: None,
        http_status: http,
        error_class: Some(class.into()),
        error: Some(format!("error of {id}")),
        spec: spec.map(str::to_owned),
        ..record(id, RowStatus::Failed, 1)
    }
}

/// Rows, lookups, group commits, failures, stale marks and imports.
fn rows_and_semantics(location: &Location) {
    let archive = Archive::open_at(location, false).expect("open");
    let err = Archive::open_at(location, false).expect_err("a second opener is refused");
    assert!(err.to_string().contains("in use by another haul process"), "{err}");
    let reader = archive.reader().expect("reader");
    assert!(reader.is_empty().unwrap(), "a new archive is empty");

    let journal = archive.writer(64, Duration::from_secs(60), false).expect("writer");
    // A job's partial and done records in one batch: the done row wins, attempts add up.
    journal.record(record("a", RowStatus::Partial, 1)).unwrap();
    journal.record(record("a", RowStatus::Done, 2)).unwrap();
    journal.record(record("p", RowStatus::Partial, 1)).unwrap();
    journal
        .record(failed(
            "f1",
            "h1.example",
            Some(404),
            "permanent",
            Some(r#"{"url":"http://h1.example/f1"}"#),
        ))
        .unwrap();
    journal
        .record(failed("f0", "h0.example", None, "transient", None))
        .unwrap();
    journal
        .record(failed("f2", "h0.example", Some(404), "permanent", None))
        .unwrap();
    journal.flush().unwrap();

    let fresh = archive.reader().unwrap();
    assert!(!fresh.is_empty().unwrap());
    let a = fresh.lookup("a").unwrap().expect("row a");
    assert_eq!(a.status, RowStatus::Done);
    assert_eq!(a.path.as_deref(), Some("dir/a.bin"));
    assert_eq!(a.size, Some(10));
    assert_eq!(a.sha256.as_deref(), Some("sha-a"));
    assert_eq!(a.blake3.as_deref(), Some("b3-a"));
    assert_eq!(a.etag.as_deref(), Some("\"a\""));
    assert_eq!(a.last_modified.as_deref(), Some("Wed, 21 Oct 2015 07:28:00 GMT"));
    assert_eq!(a.segments, None);
    assert!(a.verified && !a.stale);
    let p = fresh.lookup("p").unwrap().expect("row p");
    assert_eq!((p.status, p.segments.as_deref()), (RowStatus::Partial, Some("0-5")));
    assert_eq!(fresh.lookup("nope").unwrap(), None);
    assert_eq!(fresh.owner_of("dir/a.bin").unwrap().as_deref(), Some("a"));
    assert_eq!(fresh.owner_of("dir/p.bin").unwrap(), None, "only done rows own a path");

    // A later record replaces the row; attempts keep adding up across batches.
    journal.record(record("p", RowStatus::Done, 3)).unwrap();
    journal.flush().unwrap();
    let counts = archive.reader().unwrap().counts().unwrap();
    assert_eq!(counts, vec![("done".into(), 2, 20), ("failed".into(), 3, 0)]);

    let reader = archive.reader().unwrap();
    let groups = reader.failure_groups().unwrap();
    let summary: Vec<_> = groups
        .iter()
        .map(|g| (g.reason.as_str(), g.class.as_str(), g.host.as_str(), g.count))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("http 404", "permanent", "h0.example:80", 1),
            ("http 404", "permanent", "h1.example:80", 1),
            ("transient", "transient", "h0.example:80", 1),
        ]
    );
    let mut lines = Vec::new();
    reader
        .for_each_failed(|line| {
            lines.push(line.to_owned());
            Ok(())
        })
        .unwrap();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].contains(r#""id":"f0""#), "in id order: {lines:?}");
    assert_eq!(lines[1], r#"{"url":"http://h1.example/f1"}"#, "the spec as recorded");

    // Stale marks, over more rows than one page of the keyset walk.
    for i in 0..1500 {
        journal.record(record(&format!("d{i:04}"), RowStatus::Done, 1)).unwrap();
    }
    journal.close().unwrap();
    assert!(journal.record(record("late", RowStatus::Done, 1)).is_err(), "closed");
    let (checked, stale) = archive
        .mark_stale(|row| row.id.ends_with('7').then(|| format!("missing {}", row.path)))
        .unwrap();
    assert_eq!((checked, stale), (1502, 150));
    let reader = archive.reader().unwrap();
    let marked = reader.lookup("d0007").unwrap().unwrap();
    assert_eq!((marked.status, marked.stale), (RowStatus::Failed, true));
    assert!(!reader.lookup("d0008").unwrap().unwrap().stale);
    assert!(
        reader
            .failure_groups()
            .unwrap()
            .iter()
            .any(|g| g.class == STALE && g.count == 150)
    );

    let added = import_ids(&archive, "a\nyoutube abc\n\n# note\nyoutube abc\nvimeo 1\n".as_bytes()).unwrap();
    assert_eq!(added, 2, "only new ids are added");
    let fresh = archive.reader().unwrap();
    assert_eq!(fresh.lookup("youtube abc").unwrap().unwrap().status, RowStatus::Done);
    assert_eq!(
        fresh.lookup("a").unwrap().unwrap().path.as_deref(),
        Some("dir/a.bin"),
        "kept"
    );

    drop(archive);
    let again = Archive::open_at(location, false).expect("the lock goes with the archive");
    drop(again);
    assert!(ArchiveReader::open_at(location).is_ok(), "a reader needs no lock");
}

/// A whole run records every job; a rerun skips them all without a request.
async fn engine_run_and_rerun(location: &Location, mode: ArchiveMode) {
    let server = FaultServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let mut manifest = String::new();
    for i in 0..30 {
        manifest.push_str(&server.url(&format!("f{i}.bin"), 1000 + i, ""));
        manifest.push('\n');
    }
    manifest.push_str(&server.url("gone.bin", 10, "status=404"));
    manifest.push('\n');
    let (summary, _) = run(config(&out).archive(mode.clone()).build(), &manifest, Format::Plain).await;
    assert_eq!(summary.done, 30, "{summary:?}");
    assert_eq!(summary.failed.values().sum::<u64>(), 1, "{summary:?}");
    let reader = ArchiveReader::open_at(location).unwrap();
    let counts = reader.counts().unwrap();
    assert_eq!(counts[0].0, "done");
    assert_eq!(counts[0].1, 30);
    let hits = server.total_hits();
    let (again, seen) = run(config(&out).archive(mode).build(), &manifest, Format::Plain).await;
    assert_eq!(again.skipped.get("archived"), Some(&30), "{again:?}");
    let skipped = seen.by_id().values().filter(|s| s.status == JobStatus::Skipped).count();
    assert_eq!(skipped, 30);
    assert_eq!(server.total_hits() - hits, 1, "only the failed job is asked for again");
}

#[test]
fn sqlite_archive_conforms() {
    let dir = tempfile::tempdir().unwrap();
    rows_and_semantics(&Location::File(dir.path().join("a.sqlite")));
}

#[tokio::test]
async fn sqlite_archive_serves_a_run_and_its_rerun() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("runs.sqlite");
    engine_run_and_rerun(&Location::File(file.clone()), ArchiveMode::Path(file)).await;
}

#[cfg(feature = "queue")]
mod postgres {
    use super::*;
    use haul_test::Postgres;

    #[test]
    fn postgres_archive_conforms() {
        let pg = Postgres::start();
        let url = pg.database("haul");
        rows_and_semantics(&Location::parse(&format!("{url}#photos")));
        // Another name in the same database is another archive.
        let other = Location::parse(&format!("{url}#videos"));
        let archive = Archive::open_at(&other, false).expect("a second name opens beside the first");
        assert!(archive.reader().unwrap().is_empty().unwrap());
        assert_eq!(
            ArchiveReader::open_at(&Location::parse(&format!("{url}#photos")))
                .unwrap()
                .lookup("a")
                .unwrap()
                .map(|r| r.status),
            Some(RowStatus::Done)
        );
    }

    #[tokio::test]
    async fn postgres_archive_serves_a_run_and_its_rerun() {
        let pg = Postgres::start();
        let url = format!("{}#run", pg.database("haul"));
        engine_run_and_rerun(&Location::parse(&url), ArchiveMode::Postgres(url.clone())).await;
    }
}
