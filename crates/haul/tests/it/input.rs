//! The engine's job input: an iterator that may block for long (a queue waiting for work).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use haul::{Engine, InputReady, Job, JobReport, ManifestError, Reporter};
use haul_test::FaultServer;

use crate::support::config;

/// Jobs handed in by the test; `next` blocks while there are none and the feed is open.
#[derive(Default)]
struct Feed {
    state: Mutex<(VecDeque<Job>, bool)>,
    more: Condvar,
    ready: InputReady,
}

impl Feed {
    fn push(&self, jobs: impl IntoIterator<Item = Job>) {
        let mut state = self.state.lock().unwrap();
        state.0.extend(jobs);
        self.ready.set(state.0.len());
        self.more.notify_all();
    }

    fn close(&self) {
        self.state.lock().unwrap().1 = true;
        self.more.notify_all();
    }
}

struct Reader(Arc<Feed>);

impl Iterator for Reader {
    type Item = Result<Job, ManifestError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut state = self.0.state.lock().unwrap();
        loop {
            if let Some(job) = state.0.pop_front() {
                self.0.ready.set(state.0.len());
                return Some(Ok(job));
            }
            if state.1 {
                return None;
            }
            state = self.0.more.wait(state).unwrap();
        }
    }
}

/// Counts finished jobs and wakes the test at each.
#[derive(Default)]
struct Count {
    finished: Mutex<usize>,
    changed: Condvar,
}

impl Reporter for Count {
    fn on_job_finished(&self, _: &JobReport<'_>) {
        *self.finished.lock().unwrap() += 1;
        self.changed.notify_all();
    }
}

/// An input that stalls and says how many jobs it holds ready: jobs read while the dispatcher
/// is busy gather into batches, but a batch is handed over before a read that blocks, so no
/// job waits behind it. Here the feed sends the last job only once every earlier one ended: a
/// job held back by the reader would stop the run (bounded by the timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalling_input_never_holds_jobs_behind_a_blocked_read() {
    let server = FaultServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let feed = Arc::new(Feed::default());
    let mut config = config(&tmp.path().join("out")).concurrency(2).per_host(2).build();
    config.input_may_stall = true;
    config.input_ready = Some(feed.ready.clone());
    let job = |n: usize| Job::new(haul::parse_url(&server.url(&format!("f{n}"), 100, "")).unwrap());
    // Far more than the dispatcher takes in at once (its window is 4 × 2 + 64 jobs): the
    // reader meets a full channel with jobs ready.
    const FIRST: usize = 300;
    feed.push((0..FIRST).map(job));
    let count = Arc::new(Count::default());
    let run = tokio::spawn({
        let (feed, count) = (Arc::clone(&feed), Arc::clone(&count));
        async move { Engine::new(config).run(Reader(feed), count as Arc<dyn Reporter>).await }
    });
    let waited = tokio::task::spawn_blocking({
        let count = Arc::clone(&count);
        move || {
            let finished = count.finished.lock().unwrap();
            let (finished, timeout) = count
                .changed
                .wait_timeout_while(finished, Duration::from_secs(30), |n| *n < FIRST)
                .unwrap();
            (*finished, timeout.timed_out())
        }
    })
    .await
    .unwrap();
    assert_eq!(waited, (FIRST, false), "every job fed before the stall ended during it");
    feed.push([job(FIRST)]);
    feed.close();
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the run ends")
        .unwrap()
        .unwrap();
    assert_eq!(
        (summary.done, summary.failed.len()),
        (FIRST as u64 + 1, 0),
        "{summary:?}"
    );
    for n in [0, FIRST / 2, FIRST] {
        let path = tmp
            .path()
            .join("out")
            .join(crate::support::flat_name(&server.url(&format!("f{n}"), 100, "")));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 100, "{}", path.display());
    }
}
