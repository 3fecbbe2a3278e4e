//! A throwaway S3-compatible server: moto's server (from PyPI, installed into `target/py-venv`
//! by `scripts/test.sh`) on a free port of 127.0.0.1, stopped by its PID.
//!
//! The helpers below talk to it with plain HTTP/1.1 and a dummy signature (moto checks that a
//! request is signed, not the signature), so a test checks what is in the bucket without going
//! through the client under test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where moto's server program is: `$HAUL_MOTO_SERVER`, else the virtual environment that
/// `scripts/test.sh` makes (`target/py-venv`).
#[must_use]
pub fn moto_server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("HAUL_MOTO_SERVER") {
        return Some(PathBuf::from(path));
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/py-venv/bin/moto_server");
    venv.exists().then_some(venv)
}

/// An `Authorization` header moto takes as a signed request (it does not check signatures).
const SIGNED: &str = "Authorization: AWS4-HMAC-SHA256 Credential=haul-test/20260101/us-east-1/s3/aws4_request, \
                      SignedHeaders=host, Signature=00\r\n";

/// A running moto server.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    log: PathBuf,
    /// The port on 127.0.0.1.
    pub port: u16,
}

impl S3Server {
    /// Starts moto's server on a free port and waits until it answers.
    ///
    /// # Panics
    /// moto is not installed (run `scripts/test.sh`, or set `HAUL_MOTO_SERVER`), or it does not
    /// start within 30 s.
    #[must_use]
    pub fn start() -> Self {
        let binary = moto_server_binary().expect(
            "moto's server: run scripts/test.sh (it installs moto[server] into target/py-venv) or set HAUL_MOTO_SERVER",
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let log = std::env::temp_dir().join(format!("haul-moto-{}-{stamp}.log", std::process::id()));
        let out = std::fs::File::create(&log).expect("create the moto log");
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let server = Self { child, log, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while server.request("GET", "/", &[]).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start: {}",
                std::fs::read_to_string(&server.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// The server's base URL (`--s3-endpoint`).
    #[must_use]
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One unsigned request; the status and the body.
    fn request(&self, method: &str, target: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        self.exchange(method, target, body)
            .map(|(status, _, body)| (status, body))
    }

    /// One unsigned request; the status, the response's head and its body.
    fn exchange(&self, method: &str, target: &str, body: &[u8]) -> std::io::Result<(u16, String, Vec<u8>)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n{SIGNED}\r\n",
            self.port,
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no response head"))?;
        let head = String::from_utf8_lossy(&answer[..split]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
        let mut body = answer[split + 4..].to_vec();
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        Ok((status, head, body))
    }

    fn expect_ok(&self, method: &str, target: &str, body: &[u8]) -> Vec<u8> {
        let (status, answer) = self
            .request(method, target, body)
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
        assert!(
            (200..300).contains(&status),
            "{method} {target}: {status} {}",
            String::from_utf8_lossy(&answer)
        );
        answer
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, bucket: &str) {
        self.expect_ok("PUT", &format!("/{bucket}"), &[]);
    }

    /// Puts an object (as another program would).
    pub fn put(&self, bucket: &str, key: &str, body: &[u8]) {
        self.expect_ok("PUT", &format!("/{bucket}/{key}"), body);
    }

    /// An object's bytes, or `None` when there is none.
    #[must_use]
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let (status, body) = self
            .request("GET", &format!("/{bucket}/{key}"), &[])
            .expect("GET object");
        (status == 200).then_some(body)
    }

    /// A response header of a `HEAD` of the object (`x-amz-meta-haul-sha256`, say), or `None`
    /// when the object or the header is missing.
    #[must_use]
    pub fn object_header(&self, bucket: &str, key: &str, header: &str) -> Option<String> {
        let (status, head, _) = self
            .exchange("HEAD", &format!("/{bucket}/{key}"), &[])
            .expect("HEAD object");
        if status != 200 {
            return None;
        }
        head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case(header)
                .then(|| value.trim().to_owned())
        })
    }

    /// The keys (and sizes) of the objects under `prefix`, sorted (at most 10,000).
    #[must_use]
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..10 {
            let mut target = format!("/{bucket}?list-type=2&max-keys=1000&prefix={prefix}");
            if let Some(t) = &token {
                target.push_str("&continuation-token=");
                target.push_str(&percent(t));
            }
            let xml = String::from_utf8_lossy(&self.expect_ok("GET", &target, &[])).into_owned();
            for item in elements(&xml, "Contents") {
                let key = elements(item, "Key").next().unwrap_or_default();
                let size = elements(item, "Size").next().and_then(|s| s.parse().ok()).unwrap_or(0);
                out.push((unescape(key), size));
            }
            token = elements(&xml, "NextContinuationToken").next().map(unescape);
            if token.is_none() {
                break;
            }
        }
        out.sort();
        out
    }

    /// How many multipart uploads are begun and neither completed nor aborted.
    #[must_use]
    pub fn open_uploads(&self, bucket: &str) -> usize {
        let xml = String::from_utf8_lossy(&self.expect_ok("GET", &format!("/{bucket}?uploads"), &[])).into_owned();
        elements(&xml, "Upload").count()
    }

    /// The request lines the server logged (`PUT /bucket/key HTTP/1.1` ...), oldest first.
    #[must_use]
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let start = line.find('"')?;
                let rest = &line[start + 1..];
                Some(rest[..rest.find('"')?].to_owned())
            })
            .collect()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The contents of each `<tag>…</tag>` in `xml`.
fn elements<'a>(xml: &'a str, tag: &str) -> impl Iterator<Item = &'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut rest = xml;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let end = start + rest[start..].find(&close)?;
        let found = &rest[start..end];
        rest = &rest[end + close.len()..];
        Some(found)
    })
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&body[..line_end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        out.extend_from_slice(&body[start..(start + size).min(body.len())]);
        body = &body[(start + size + 2).min(body.len())..];
    }
    out
}
