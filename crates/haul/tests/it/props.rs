//! Issue 8: a property test of the transfer state machine through the real engine. A scripted
//! server answers an interrupted download's resume with a random sequence of answers, sane and
//! lying; whatever the sequence, a job recorded done has exactly one whole representation's
//! bytes (and its archive row says so), and every job ends done or failed within the budget.

use haul::{ArchiveMode, Format};
use haul_test::{Reply, Scripted, body_for, sha256_hex};
use proptest::prelude::*;

use crate::support::{config, run};

const N: usize = 60_000;
const HALF: usize = N / 2;
const RETRIES: u32 = 3;

fn v1() -> Vec<u8> {
    body_for("p.bin", N as u64)
}

fn v2() -> Vec<u8> {
    body_for("p2.bin", (N + 777) as u64)
}

/// Answers a server may give to any request, with the index drawn by proptest.
fn answer(kind: u8, cut: usize) -> Reply {
    let (one, two) = (v1(), v2());
    let partial = |start: usize, range: String, etag: &str| {
        let body = one[start.min(N)..].to_vec();
        Reply::new(
            format!(
                "HTTP/1.1 206 Partial Content\nContent-Range: {range}\nContent-Length: {}\n{etag}",
                body.len()
            )
            .trim_end(),
            body,
        )
    };
    match kind % 14 {
        0 => Reply::new(&format!("HTTP/1.1 200 OK\nContent-Length: {N}\nETag: \"v1\""), one),
        1 => Reply::new(
            &format!("HTTP/1.1 200 OK\nContent-Length: {}\nETag: \"v2\"", two.len()),
            two,
        ),
        2 => partial(HALF, format!("bytes {HALF}-{}/{N}", N - 1), "ETag: \"v1\""),
        3 => partial(HALF, format!("bytes {HALF}-{}/{}", N - 1, N + 5), "ETag: \"v1\""),
        4 => partial(HALF, format!("bytes {HALF}-{}/{N}", N - 1), ""),
        5 => partial(HALF, format!("bytes {HALF}-{}/{N}", N - 1), "ETag: \"v9\""),
        6 => partial(HALF + 3, format!("bytes {}-{}/{N}", HALF + 3, N - 1), "ETag: \"v1\""),
        7 => Reply::new(
            &format!(
                "HTTP/1.1 200 OK\nContent-Range: bytes {HALF}-{}/{N}\nContent-Length: {}\nETag: \"v1\"",
                N - 1,
                N - HALF
            ),
            one[HALF..].to_vec(),
        ),
        8 => Reply::new(
            &format!("HTTP/1.1 416 Range Not Satisfiable\nContent-Range: bytes */{N}\nContent-Length: 0"),
            "",
        ),
        9 => Reply::new("HTTP/1.1 503 Service Unavailable\nContent-Length: 0", ""),
        10 => Reply::new(&format!("HTTP/1.1 200 OK\nContent-Length: {N}\nETag: \"v1\""), one).cut(cut % N),
        11 => partial(HALF, format!("bytes {HALF}-{}/{N}", N - 1), "ETag: \"v1\"").cut(cut % HALF),
        12 => Reply::new("HTTP/1.1 200 OK\nContent-Length: 0\nETag: \"v1\"", ""),
        // A whole body without a length, correct: done, but unverified.
        _ => Reply::new("HTTP/1.1 200 OK\nETag: \"v1\"", one),
    }
}

fn check(sequence: &[(u8, usize)]) -> Result<(), TestCaseError> {
    let mut replies = vec![Reply::new(&format!("HTTP/1.1 200 OK\nContent-Length: {N}\nETag: \"v1\""), v1()).cut(HALF)];
    replies.extend(sequence.iter().map(|&(kind, cut)| answer(kind, cut)));
    // After the script: a server gone quiet (every later request fails), so nothing ends done
    // by luck past the sequence.
    replies.push(Reply::new("HTTP/1.1 500 Internal Server Error\nContent-Length: 0", ""));
    let server = Scripted::start(replies);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let url = format!("{}/p.bin", server.base());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let manifest = format!("{url}\n");
    let first = rt
        .block_on(run(config(&out).retries(0).build(), &manifest, Format::Plain))
        .0;
    prop_assert_eq!(first.failed_total(), 1);
    let cfg = config(&out)
        .retries(RETRIES)
        .archive(ArchiveMode::Default)
        .digest(haul::DigestKind::Blake3)
        .build();
    let (summary, _) = rt.block_on(run(cfg, &manifest, Format::Plain));
    prop_assert_eq!(summary.done + summary.failed_total(), 1, "ended: {:?}", summary);
    prop_assert!(
        server.requests().len() <= 1 + 1 + RETRIES as usize,
        "within the retry budget"
    );
    let row = haul::archive::ArchiveReader::open(&out.join(".haul/archive.sqlite"))
        .unwrap()
        .lookup(&url)
        .unwrap()
        .unwrap();
    if summary.done == 1 {
        let file = std::fs::read(out.join("p.bin")).unwrap();
        let sha = sha256_hex(&file);
        prop_assert!(
            sha == sha256_hex(&v1()) || sha == sha256_hex(&v2()),
            "a done file is one whole representation ({} bytes)",
            file.len()
        );
        let digest = haul_test::blake3_hex(&file);
        prop_assert_eq!(row.blake3.as_deref(), Some(digest.as_str()));
        prop_assert_eq!(row.status, haul::archive::RowStatus::Done);
    } else {
        prop_assert!(!out.join("p.bin").exists(), "no partial bytes at the final name");
        prop_assert_eq!(row.status, haul::archive::RowStatus::Failed);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_answer_sequence_ends_and_never_records_a_wrong_file(
        sequence in proptest::collection::vec((any::<u8>(), any::<usize>()), 1..6)
    ) {
        check(&sequence)?;
    }
}
