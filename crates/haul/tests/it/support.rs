//! Helpers shared by the integration tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use haul::{Config, ConfigBuilder, Engine, Format, JobReport, JobStatus, ManifestReader, Reporter, Summary};

/// A job report as the tests keep it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) id: String,
    pub(crate) url: String,
    pub(crate) status: JobStatus,
    pub(crate) http_status: Option<u16>,
    pub(crate) attempts: u32,
    pub(crate) reason: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) line: u64,
}

/// Collects every job report.
#[derive(Default)]
pub(crate) struct Collect(pub(crate) Mutex<Vec<Seen>>);

impl Reporter for Collect {
    fn on_job_finished(&self, r: &JobReport<'_>) {
        self.0.lock().unwrap().push(Seen {
            id: r.id.to_owned(),
            url: r.url.to_string(),
            status: r.status,
            http_status: r.http_status,
            attempts: r.attempts,
            reason: r.reason.map(str::to_owned),
            error: r.error.map(str::to_owned),
            line: r.line,
        });
    }
}

impl Collect {
    pub(crate) fn by_id(&self) -> BTreeMap<String, Seen> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.id.clone(), r.clone()))
            .collect()
    }
}

/// Runs the engine over a manifest given as text.
pub(crate) async fn run(config: Config, manifest: &str, format: Format) -> (Summary, Arc<Collect>) {
    let reporter = Arc::new(Collect::default());
    let jobs = ManifestReader::new(std::io::Cursor::new(manifest.to_owned()), format);
    let summary = Engine::new(config)
        .run(jobs, Arc::clone(&reporter) as Arc<dyn Reporter>)
        .await
        .expect("run starts");
    (summary, reporter)
}

/// A config for tests: fast retries. Runs wait for the output directory's and the archive's
/// locks: another test of this binary that spawns a process (nginx, openssl) just as a run ends
/// holds that run's lock descriptors for an instant, between its fork and its exec, and the next
/// run on the same directory would find them taken.
pub(crate) fn config(out: &Path) -> ConfigBuilder {
    Config::builder(out)
        .wait_archive(true)
        .concurrency(8)
        .per_host(8)
        .retry_wait(std::time::Duration::from_millis(10))
        .retry_cap(std::time::Duration::from_millis(100))
}

/// The name haul gives a URL's file in the flat layout (`a?size=1` is `a-<hash of the query>`).
pub(crate) fn flat_name(url: &str) -> String {
    let url = haul::parse_url(url).unwrap();
    haul::store::output_path(None, &url, haul::Layout::Flat)
        .unwrap()
        .as_str()
        .to_owned()
}

pub(crate) fn sha256_file(path: &Path) -> String {
    haul_test::sha256_hex(&std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// Writes `count` files of varied sizes into `root`; returns (name, sha256).
pub(crate) fn make_files(root: &Path, count: usize, max: u64) -> Vec<(String, String)> {
    std::fs::create_dir_all(root).unwrap();
    (0..count)
        .map(|i| {
            let name = format!("file{i:05}.bin");
            let size = (i as u64 * 7919) % max + 1;
            let body = haul_test::body_for(&name, size);
            std::fs::write(root.join(&name), &body).unwrap();
            (name, haul_test::sha256_hex(&body))
        })
        .collect()
}

/// Every regular file under `root` (relative), excluding haul's state directory.
pub(crate) fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                if path.file_name().is_some_and(|n| n != ".haul") {
                    stack.push(path);
                }
            } else {
                out.push(path.strip_prefix(root).unwrap().to_owned());
            }
        }
    }
    out.sort();
    out
}

/// Percent-encodes `text` for a query value.
pub(crate) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
