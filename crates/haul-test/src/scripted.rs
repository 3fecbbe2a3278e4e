//! A scripted HTTP/1.1 server on a raw socket: a test gives, per request number, the exact
//! status line, headers and body bytes, lies included (a wrong `Content-Range`, contradictory
//! lengths, a body cut after N bytes, a body with no length at all), and the server records
//! every request's head.
//!
//! Every connection serves one request and is closed, so a body without `Content-Length` is
//! close-delimited, as a real server's would be. The server runs on a std thread (it works in
//! any test, async or not) and stops when dropped; each connection is bounded by a read
//! timeout, and the accept loop by the server's lifetime.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// One scripted response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The status line and header lines, without the final blank line (`\r\n` is added
    /// between lines given with `\n`).
    pub head: String,
    /// The body bytes.
    pub body: Vec<u8>,
    /// Send only this many body bytes, then close the connection.
    pub cut: Option<usize>,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Reply {
    /// A reply with `head` (lines separated by `\n`) and `body`.
    #[must_use]
    pub fn new(head: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            head: head.to_owned(),
            body: body.into(),
            cut: None,
            delay: Duration::ZERO,
        }
    }

    /// The same reply, its body cut after `n` bytes.
    #[must_use]
    pub fn cut(mut self, n: usize) -> Self {
        self.cut = Some(n);
        self
    }

    /// The same reply, after `delay`.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A request as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `GET /path HTTP/1.1`.
    pub line: String,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The first value of header `name` (case-insensitive).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The scripted server; stops when dropped.
#[derive(Debug)]
pub struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Scripted {
    /// Starts a server on 127.0.0.1 that answers request `n` (from 0) with `replies[n]`, and
    /// every later one with the last reply.
    ///
    /// # Panics
    /// When `replies` is empty or the port cannot be bound.
    #[must_use]
    pub fn start(replies: Vec<Reply>) -> Self {
        assert!(!replies.is_empty(), "a script needs at least one reply");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind scripted server");
        let addr = listener.local_addr().expect("local addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_seen, thread_stop) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if thread_stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let number = {
                    let Some(seen) = serve_head(&stream) else { continue };
                    let mut all = thread_seen.lock().expect("seen");
                    all.push(seen);
                    all.len() - 1
                };
                let reply = replies[number.min(replies.len() - 1)].clone();
                // Each reply on its own thread: a slow or cut body does not hold up the next.
                std::thread::spawn(move || answer(stream, &reply));
            }
        });
        Self {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests received so far.
    #[must_use]
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request head (bounded in size and time).
fn serve_head(stream: &TcpStream) -> Option<Seen> {
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut reader = BufReader::new(stream.take(64 * 1024));
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    Some(Seen {
        line: line.trim_end().to_owned(),
        headers,
    })
}

fn answer(mut stream: TcpStream, reply: &Reply) {
    std::thread::sleep(reply.delay);
    let head = reply.head.trim_end().replace("\r\n", "\n").replace('\n', "\r\n");
    let mut out = format!("{head}\r\nConnection: close\r\n\r\n").into_bytes();
    let body = reply
        .cut
        .map_or(&reply.body[..], |n| &reply.body[..n.min(reply.body.len())]);
    out.extend_from_slice(body);
    let _ = stream.write_all(&out);
    let _ = stream.flush();
    // Close: the client sees the end of a close-delimited body, or a body cut short.
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
