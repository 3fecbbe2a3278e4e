//! `haul._haul`: the engine for Python. The Python package (`python/haul/__init__.py`) wraps it.
//!
//! A [`Run`] owns one engine run on a thread of its own (a current-thread tokio runtime, as the
//! CLI runs it): Python never blocks the engine and the engine never waits for Python. Jobs go in
//! as JSON lines through a bounded pipe (or as a manifest file the engine reads itself); events
//! come out as JSON strings through an unbounded channel, one per job end, a progress line every
//! half second, and a final summary, so none is dropped. Python reads them with an awaitable
//! (`next_event`, through pyo3-async-runtimes) or a blocking call that releases the GIL
//! (`next_event_blocking`).

use std::io::Read;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use serde_json::{Value, json};

/// Batches of manifest bytes waiting for the engine's reader at most (back-pressure on Python).
const INPUT_BATCHES: usize = 16;
/// How often a progress event is sent.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Manifest bytes from Python, read by the engine's manifest thread.
struct Pipe {
    rx: Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at >= self.current.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.current = next;
                    self.at = 0;
                }
                // Python closed the input: the manifest ends.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

type Events = tokio::sync::mpsc::UnboundedSender<String>;

/// Sends every job's end as a JSON event.
struct Forward(Events);

impl haul::Reporter for Forward {
    fn on_job_finished(&self, r: &haul::JobReport<'_>) {
        let event = json!({
            "type": r.status.name(),
            "id": r.id,
            "url": r.url.to_string(),
            "path": r.path,
            "http_status": r.http_status,
            "bytes": r.bytes,
            "attempts": r.attempts,
            "reason": r.reason,
            "error": r.error,
            "line": r.line,
            "verified": r.verified,
            "sha256": r.sha256.map(|d| haul::to_hex(d)),
            "blake3": r.blake3.map(|d| haul::to_hex(d)),
            "elapsed": r.duration.map(|d| d.as_secs_f64()),
        });
        let _ = self.0.send(event.to_string());
    }

    fn on_bad_line(&self, error: &haul::ManifestError) {
        let event = json!({"type": "bad_line", "line": error.line, "error": error.to_string()});
        let _ = self.0.send(event.to_string());
    }

    fn on_notice(&self, message: &str) {
        let _ = self.0.send(json!({"type": "notice", "message": message}).to_string());
    }
}

/// One engine run.
#[pyclass(module = "haul._haul")]
struct Run {
    input: Mutex<Option<SyncSender<Vec<u8>>>>,
    events: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>>,
    canceller: haul::Canceller,
}

#[pymethods]
impl Run {
    /// Hands manifest bytes (whole JSON lines) to the engine; blocks, without the GIL, while
    /// the engine is that far behind.
    fn feed(&self, py: Python<'_>, data: Vec<u8>) -> PyResult<()> {
        let sender = self.input.lock().expect("input").clone();
        let Some(sender) = sender else {
            return Err(PyRuntimeError::new_err("the input of this run is closed"));
        };
        py.detach(move || sender.send(data))
            .map_err(|_| PyRuntimeError::new_err("the run has ended"))
    }

    /// Ends the input: the engine finishes the jobs it has.
    fn close(&self) {
        self.input.lock().expect("input").take();
    }

    /// Stops the run: transfers end their body loop and keep their part files; jobs not
    /// finished end pending. Events keep coming until the summary.
    fn cancel(&self) {
        self.input.lock().expect("input").take();
        self.canceller.cancel();
    }

    /// An awaitable of the next event (a JSON string), or None once the summary was sent.
    fn next_event<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let events = Arc::clone(&self.events);
        pyo3_async_runtimes::tokio::future_into_py(py, async move {
            let mut rx = events.lock().await;
            Ok(rx.recv().await)
        })
    }

    /// The next event, waiting up to `timeout` seconds without the GIL: a JSON string, "" on
    /// timeout (so the caller's Python code runs, and Ctrl-C is seen), None at the end.
    fn next_event_blocking(&self, py: Python<'_>, timeout: f64) -> Option<String> {
        let events = Arc::clone(&self.events);
        let wait = Duration::from_secs_f64(timeout.clamp(0.0, 60.0));
        py.detach(move || {
            pyo3_async_runtimes::tokio::get_runtime().block_on(async move {
                let mut rx = events.lock().await;
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(event) => event,
                    Err(_) => Some(String::new()),
                }
            })
        })
    }
}

/// Builds the engine's configuration from the options the Python layer checked.
fn config(output_dir: &str, options: &Value) -> PyResult<haul::Config> {
    let int = |name: &str| options.get(name).and_then(Value::as_u64);
    let mut builder = haul::Config::builder(output_dir);
    if let Some(n) = int("concurrency") {
        builder = builder.concurrency(usize::try_from(n).unwrap_or(usize::MAX));
    }
    if let Some(n) = int("per_host") {
        builder = builder.per_host(usize::try_from(n).unwrap_or(usize::MAX));
    }
    if let Some(n) = int("retries") {
        builder = builder.retries(u32::try_from(n).unwrap_or(u32::MAX));
    }
    if let Some(n) = int("split") {
        builder = builder.split(usize::try_from(n).unwrap_or(1));
    }
    if let Some(text) = options.get("rate").and_then(Value::as_str) {
        let rate = haul::Rate::parse(text).map_err(|e| PyValueError::new_err(format!("rate: {e}")))?;
        builder = builder.rate(Some(rate));
    }
    if let Some(text) = options.get("digest").and_then(Value::as_str) {
        let digest: haul::DigestKind = text
            .parse()
            .map_err(|e: String| PyValueError::new_err(format!("digest: {e}")))?;
        builder = builder.digest(digest);
    }
    if options.get("archive").and_then(Value::as_bool) == Some(false) {
        builder = builder.archive(haul::ArchiveMode::Off);
    }
    if let Some(headers) = options.get("headers").and_then(Value::as_array) {
        let mut pairs = Vec::new();
        for pair in headers {
            let name = pair.get(0).and_then(Value::as_str).unwrap_or_default();
            let value = pair.get(1).and_then(Value::as_str).unwrap_or_default();
            pairs.push((name.to_owned(), value.to_owned()));
        }
        builder = builder.headers(pairs);
    }
    if let Some(agent) = options.get("user_agent").and_then(Value::as_str) {
        builder = builder.user_agent(agent.to_owned());
    }
    Ok(builder.build())
}

/// Starts a run writing to `output_dir` with `options` (JSON). Jobs come from `manifest` (a
/// file the engine reads, its format read off its content) or, without one, from `feed`.
#[pyfunction]
#[pyo3(signature = (output_dir, options, manifest=None))]
fn start(output_dir: &str, options: &str, manifest: Option<&str>) -> PyResult<Run> {
    let options: Value = serde_json::from_str(options).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let config = config(output_dir, &options)?;
    let (event_tx, event_rx) = tokio::sync::mpsc::unbounded_channel();
    let engine = haul::Engine::new(config);
    let canceller = engine.canceller();
    let (input, reader): (Option<SyncSender<Vec<u8>>>, Box<dyn Read + Send>) = match manifest {
        Some(path) => {
            let file = std::fs::File::open(path).map_err(|e| PyOSError::new_err(format!("{path}: {e}")))?;
            (None, Box::new(file))
        }
        None => {
            let (tx, rx) = sync_channel(INPUT_BATCHES);
            let pipe = Pipe {
                rx,
                current: Vec::new(),
                at: 0,
            };
            (Some(tx), Box::new(pipe))
        }
    };
    let format = match manifest {
        Some(path) => manifest_format(path)?,
        None => haul::Format::Jsonl,
    };
    let jobs = haul::ManifestReader::new(std::io::BufReader::new(reader), format);
    std::thread::Builder::new()
        .name("haul-run".into())
        .spawn(move || run_engine(&engine, jobs, &event_tx))
        .map_err(|e| PyOSError::new_err(e.to_string()))?;
    Ok(Run {
        input: Mutex::new(input),
        events: Arc::new(tokio::sync::Mutex::new(event_rx)),
        canceller,
    })
}

/// The format of a manifest file, read off its first bytes.
fn manifest_format(path: &str) -> PyResult<haul::Format> {
    let mut sample = vec![0u8; 64 * 1024];
    let mut file = std::fs::File::open(path).map_err(|e| PyOSError::new_err(format!("{path}: {e}")))?;
    let n = file
        .read(&mut sample)
        .map_err(|e| PyOSError::new_err(format!("{path}: {e}")))?;
    let named = haul::Format::named_by(std::path::Path::new(path));
    match haul::manifest::sniff(&sample[..n], named) {
        Ok(haul::manifest::Sniffed::Looks(format)) => Ok(format),
        Ok(haul::manifest::Sniffed::Empty) => Ok(named.unwrap_or(haul::Format::Plain)),
        Err(why) => Err(PyValueError::new_err(format!("{path} is not a manifest: {why}"))),
    }
}

/// The engine's thread: runs to the end, sending progress meanwhile, then the summary.
fn run_engine<R: std::io::BufRead + Send + 'static>(
    engine: &haul::Engine,
    jobs: haul::ManifestReader<R>,
    events: &Events,
) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = events.send(json!({"type": "summary", "fatal": e.to_string()}).to_string());
            return;
        }
    };
    let monitor = engine.monitor();
    let progress_events = events.clone();
    let result = runtime.block_on(async {
        let progress = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PROGRESS_EVERY);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = monitor.stats();
                let event = json!({
                    "type": "progress",
                    "done": s.done,
                    "failed": s.failed,
                    "skipped": s.skipped,
                    "active": s.active,
                    "bytes": s.bytes,
                    "total": s.total,
                    "elapsed": s.elapsed.as_secs_f64(),
                });
                if progress_events.send(event.to_string()).is_err() {
                    return;
                }
            }
        });
        let summary = engine.run(jobs, Arc::new(Forward(events.clone()))).await;
        progress.abort();
        summary
    });
    let event = match result {
        Ok(s) => json!({
            "type": "summary",
            "done": s.done,
            "skipped": s.skipped.values().sum::<u64>(),
            "failed": s.failed_total(),
            "pending": s.pending,
            "bad_lines": s.bad_lines,
            "bytes": s.bytes,
            "retries": s.retries,
            "elapsed": s.elapsed.as_secs_f64(),
            "interrupted": s.interrupted,
            "fatal": s.fatal,
        }),
        Err(e) => json!({"type": "summary", "fatal": e.to_string(), "start_error": true}),
    };
    let _ = events.send(event.to_string());
}

/// The module.
#[pymodule]
fn _haul(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_class::<Run>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
