//! Test support for haul: a fault-injecting HTTP server, a scripted raw-socket server whose
//! every byte a test chooses, and fixtures for real nginx.
//!
//! This crate does not depend on `haul`, so the library's tests can use it without a cycle.

mod fault;
pub mod nginx;
mod postgres;
pub mod s3;
mod scripted;
mod socks;

pub use fault::{Beyond, Capacity, FaultServer, Logged, Mix, blake3_hex, body_for, body_version, sha256_hex};
pub use nginx::{Nginx, nginx_binary};
pub use postgres::{Postgres, postgres_binaries};
pub use s3::{S3Server, moto_server_binary};
pub use scripted::{Reply, Scripted, Seen};
pub use socks::Socks5;
