//! Test support for haul: a fault-injecting HTTP server and fixtures for real nginx.
//!
//! This crate does not depend on `haul`, so the library's tests can use it without a cycle.

mod fault;
pub mod nginx;
mod socks;

pub use fault::{FaultServer, Mix, body_for, sha256_hex};
pub use nginx::{Nginx, nginx_binary};
pub use socks::Socks5;
