//! A minimal SOCKS5 proxy (RFC 1928, no authentication, CONNECT only) on 127.0.0.1, counting
//! the connections it relays, for testing `--proxy socks5://…`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running SOCKS5 proxy; stops when dropped.
#[derive(Debug)]
pub struct Socks5 {
    port: u16,
    relayed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Socks5 {
    /// Starts the proxy on an ephemeral port of 127.0.0.1, on the current tokio runtime.
    ///
    /// # Panics
    /// When the port cannot be bound.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind socks5");
        let port = listener.local_addr().expect("local addr").port();
        let relayed = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&relayed);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    if let Ok((mut client, mut server)) = handshake(client).await {
                        counter.fetch_add(1, Ordering::Relaxed);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { port, relayed, task }
    }

    /// `socks5://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("socks5://127.0.0.1:{}", self.port)
    }

    /// Connections relayed so far.
    #[must_use]
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }
}

impl Drop for Socks5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Greeting, method selection (no auth), CONNECT request; returns (client, upstream).
async fn handshake(mut client: TcpStream) -> std::io::Result<(TcpStream, TcpStream)> {
    let mut head = [0u8; 2];
    client.read_exact(&mut head).await?;
    let mut methods = vec![0u8; usize::from(head[1])];
    client.read_exact(&mut methods).await?;
    client.write_all(&[5, 0]).await?;
    let mut request = [0u8; 4];
    client.read_exact(&mut request).await?;
    let host = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            std::net::Ipv4Addr::from(ip).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            client.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            client.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        _ => return Err(std::io::Error::other("unsupported address type")),
    };
    let mut port = [0u8; 2];
    client.read_exact(&mut port).await?;
    let upstream = TcpStream::connect((host.as_str(), u16::from_be_bytes(port))).await?;
    client.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0]).await?;
    Ok((client, upstream))
}
