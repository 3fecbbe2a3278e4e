//! A throwaway nginx (Debian's package) serving a directory on 127.0.0.1, stopped by its PID.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running nginx with an HTTP/1.1 port and an h2c (prior knowledge) port.
#[derive(Debug)]
pub struct Nginx {
    dir: PathBuf,
    pid: i32,
    /// The HTTP/1.1 port.
    pub port: u16,
    /// The h2c port (`listen ... http2`).
    pub h2_port: u16,
    /// The TLS port (HTTP/2 offered by ALPN), with a self-signed certificate for 127.0.0.1.
    pub tls_port: u16,
    /// The PEM certificate of the test CA that signed the TLS port's certificate.
    pub certificate: PathBuf,
    /// A TLS port whose certificate is self-signed the usual way (`openssl req -x509`: marked
    /// as a CA), for 127.0.0.1.
    pub self_signed_port: u16,
    /// That port's own certificate (PEM).
    pub self_signed: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A test CA (`ca.pem`) and a server certificate it signed for 127.0.0.1 (`cert.pem`, `key.pem`).
pub(crate) fn make_certificates(work: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    std::fs::write(
        work.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write leaf.ext");
    let steps: [Vec<&str>; 4] = [
        [
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "2",
                "-subj",
                "/CN=haul test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
        [
            &["req"][..],
            &ec,
            &["-subj", "/CN=127.0.0.1", "-keyout", "key.pem", "-out", "leaf.csr"],
        ]
        .concat(),
        vec![
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
            "-out",
            "cert.pem",
        ],
        // A server's own self-signed certificate, as most guides make one.
        [
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                "self.key",
                "-out",
                "self.pem",
            ],
        ]
        .concat(),
    ];
    for args in steps {
        let made = Command::new("openssl")
            .args(&args)
            .current_dir(work)
            .output()
            .expect("openssl is not installed: apt-get install -y openssl");
        assert!(
            made.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
}

/// Where the nginx binary is, if installed.
#[must_use]
pub fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl Nginx {
    /// Starts nginx serving `root`, with its config, logs and PID file in `work`.
    ///
    /// # Panics
    /// When nginx is not installed (`apt-get install nginx-light`) or does not start.
    #[must_use]
    pub fn start(root: &Path, work: &Path) -> Self {
        let binary = nginx_binary().expect("nginx is not installed: apt-get install -y nginx-light");
        for attempt in 0..5 {
            let (port, h2_port, tls_port, self_signed_port) = (free_port(), free_port(), free_port(), free_port());
            std::fs::create_dir_all(work).expect("nginx work dir");
            let certificate = work.join("ca.pem");
            let key = work.join("key.pem");
            if !certificate.exists() {
                make_certificates(work);
            }
            std::fs::create_dir_all(work.join("logs")).expect("nginx logs dir");
            std::fs::create_dir_all(work.join("tmp")).expect("nginx tmp dir");
            let w = work.display();
            let mut conf = String::new();
            let _ = write!(
                conf,
                "worker_processes 1;\ndaemon on;\npid {w}/nginx.pid;\nerror_log {w}/logs/error.log;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  log_format haul '$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" conn=$connection';\n  access_log {w}/logs/access.log haul;\n  client_body_temp_path {w}/tmp/body;\n  proxy_temp_path {w}/tmp/proxy;\n\
                 fastcgi_temp_path {w}/tmp/fcgi;\n  uwsgi_temp_path {w}/tmp/uwsgi;\n  scgi_temp_path {w}/tmp/scgi;\n\
                 sendfile on; tcp_nopush on; keepalive_requests 1000000; keepalive_timeout 120s;\n\
                 server {{ listen 127.0.0.1:{port}; root {root}; }}\n\
                 server {{ listen 127.0.0.1:{h2_port} http2; root {root}; }}\n\
                 server {{ listen 127.0.0.1:{tls_port} ssl http2; root {root};\n\
                   ssl_certificate {cert}; ssl_certificate_key {key};\n\
                   location = /downgrade {{ return 302 http://127.0.0.1:{port}/downgraded; }} }}\n\
                 server {{ listen 127.0.0.1:{self_signed_port} ssl; root {root};\n\
                   ssl_certificate {w}/self.pem; ssl_certificate_key {w}/self.key; }}\n}}\n",
                root = root.display(),
                cert = work.join("cert.pem").display(),
                key = key.display()
            );
            std::fs::write(work.join("nginx.conf"), conf).expect("write nginx.conf");
            let status = Command::new(&binary)
                .arg("-c")
                .arg(work.join("nginx.conf"))
                .arg("-p")
                .arg(work)
                .arg("-e")
                .arg(work.join("logs/error.log"))
                .status()
                .expect("run nginx");
            if !status.success() {
                assert!(
                    attempt < 4,
                    "nginx failed to start: see {}/logs/error.log",
                    work.display()
                );
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            let pid = loop {
                if let Some(pid) = std::fs::read_to_string(work.join("nginx.pid"))
                    .ok()
                    .and_then(|p| p.trim().parse().ok())
                {
                    break pid;
                }
                assert!(Instant::now() < deadline, "nginx wrote no PID file");
                std::thread::sleep(Duration::from_millis(20));
            };
            return Self {
                dir: work.to_owned(),
                pid,
                port,
                h2_port,
                tls_port,
                certificate,
                self_signed_port,
                self_signed: work.join("self.pem"),
            };
        }
        unreachable!("nginx start loop returns or panics")
    }

    /// `http://127.0.0.1:PORT`.
    #[must_use]
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:H2PORT` (h2c prior knowledge only).
    #[must_use]
    pub fn h2_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.h2_port)
    }

    /// `https://127.0.0.1:TLSPORT` (HTTP/2 by ALPN; `/downgrade` redirects to plain http).
    #[must_use]
    pub fn tls_base(&self) -> String {
        format!("https://127.0.0.1:{}", self.tls_port)
    }

    /// The access log's lines so far.
    #[must_use]
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("logs/access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGQUIT: graceful stop of the master we started, by its PID.
        let _ = Command::new("kill").arg("-QUIT").arg(self.pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{}", self.pid)).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
