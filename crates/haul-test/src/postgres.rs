//! A throwaway PostgreSQL (Debian's package): `initdb` into a temporary directory, `pg_ctl start`
//! on a free port of 127.0.0.1 (as the `postgres` user when the tests run as root), stopped by
//! its PID.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The directory of PostgreSQL's server programs (`initdb`, `pg_ctl`), newest version first.
#[must_use]
pub fn postgres_binaries() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    pid: Option<i32>,
    /// The port on 127.0.0.1.
    pub port: u16,
    /// With [`Postgres::start_tls`]: the test CA that signed the server's certificate (for
    /// 127.0.0.1), whose server then accepts TLS.
    pub ca: Option<PathBuf>,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs one of PostgreSQL's programs, as `postgres` when we are root (the server refuses root).
fn pg(bin: &Path, program: &str, args: &[&str]) -> std::process::Output {
    let path = bin.join(program);
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&path);
        c
    } else {
        Command::new(&path)
    };
    command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()))
}

impl Postgres {
    /// Creates a cluster in a new temporary directory and starts it.
    ///
    /// # Panics
    /// PostgreSQL is not installed, or does not start.
    #[must_use]
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// As [`Postgres::start`], with TLS on (`ssl=on`, a certificate for 127.0.0.1 signed by a
    /// test CA, see [`Postgres::ca`]); TCP connections are accepted only over TLS.
    ///
    /// # Panics
    /// PostgreSQL or openssl is not installed, or the server does not start.
    #[must_use]
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let bin = postgres_binaries().expect("PostgreSQL's server programs (apt-get install postgresql)");
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("haul-pg-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the data directory");
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the data directory to postgres");
        }
        let data = dir.to_str().expect("utf-8 temp dir");
        let out = pg(
            &bin,
            "initdb",
            &[
                "-D",
                data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let ca = tls.then(|| {
            let certs = dir.with_extension("certs");
            std::fs::create_dir_all(&certs).expect("create the certificates directory");
            crate::nginx::make_certificates(&certs);
            for (from, to) in [("cert.pem", "server.crt"), ("key.pem", "server.key")] {
                std::fs::copy(certs.join(from), dir.join(to)).expect("copy the certificate");
            }
            if is_root() {
                let ok = Command::new("chown")
                    .args(["postgres:postgres"])
                    .arg(dir.join("server.crt"))
                    .arg(dir.join("server.key"))
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "chown the certificate to postgres");
            }
            let ok = Command::new("chmod")
                .arg("600")
                .arg(dir.join("server.key"))
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chmod the key");
            // TCP only over TLS: a client that connects in plain TCP is refused.
            std::fs::write(
                dir.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .expect("write pg_hba.conf");
            certs.join("ca.pem")
        });
        let mut server = Self {
            dir,
            bin,
            pid: None,
            port,
            ca,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let data = self.dir.to_str().expect("utf-8 temp dir").to_owned();
        let mut options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={data} -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.port
        );
        if self.ca.is_some() {
            options.push_str(" -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key");
        }
        let log = format!("{data}/server.log");
        let out = pg(
            &self.bin,
            "pg_ctl",
            &["-D", &data, "-l", &log, "-w", "-t", "30", "-o", &options, "start"],
        );
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let pid_file = std::fs::read_to_string(self.dir.join("postmaster.pid")).expect("postmaster.pid");
        self.pid = Some(
            pid_file
                .lines()
                .next()
                .and_then(|l| l.trim().parse().ok())
                .expect("pid in postmaster.pid"),
        );
    }

    /// The connection URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Creates a database and returns its URL (one per test keeps tests apart).
    ///
    /// # Panics
    /// `createdb` failed.
    #[must_use]
    pub fn database(&self, name: &str) -> String {
        let port = self.port.to_string();
        let out = pg(
            &self.bin,
            "createdb",
            &["-h", "127.0.0.1", "-p", &port, "-U", "postgres", name],
        );
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs SQL with `psql` and returns its unaligned output (rows on lines, `|` between
    /// columns).
    ///
    /// # Panics
    /// psql failed.
    #[must_use]
    pub fn query(&self, url: &str, sql: &str) -> String {
        let out = Command::new("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the server (fast shutdown: clients are disconnected) and starts it again on the
    /// same port and data.
    pub fn restart(&mut self) {
        self.stop_server();
        self.launch();
    }

    fn stop_server(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        let _ = Command::new("kill").arg("-INT").arg(pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && Command::new("kill")
                .args(["-0", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_server();
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.ca.is_some() {
            let _ = std::fs::remove_dir_all(self.dir.with_extension("certs"));
        }
    }
}
