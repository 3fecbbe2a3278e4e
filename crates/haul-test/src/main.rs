//! `haul-testserver`: the fault-injecting server as a program, for demos and for trying haul
//! against faults by hand. Prints its base URL on the first line of stdout, then serves until
//! killed (or for `--seconds N`).

use std::io::Write as _;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut mix = haul_test::Mix::default();
    let mut bind = "127.0.0.1:0".to_owned();
    let mut seconds: Option<u64> = None;
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match arg.as_str() {
            "--bind" => bind = value(),
            "--seconds" => seconds = value().parse().ok(),
            "--seed" => mix.seed = value().parse().unwrap_or(0),
            "--unavailable" => mix.unavailable = value().parse().unwrap_or(0),
            "--reset" => mix.reset = value().parse().unwrap_or(0),
            "--short" => mix.short = value().parse().unwrap_or(0),
            "--changed-validator" => mix.changed_validator = value().parse().unwrap_or(0),
            _ => {
                let mut err = std::io::stderr();
                let _ = writeln!(
                    err,
                    "usage: haul-testserver [--bind 127.0.0.1:PORT] [--seconds N] [--seed N] \
                     [--unavailable PCT] [--reset PCT] [--short PCT] [--changed-validator PCT]\n\
                     serves /f/NAME?size=N (see crates/haul-test/src/fault.rs for fault parameters)"
                );
                std::process::exit(2);
            }
        }
    }
    let server = haul_test::FaultServer::start_with(mix, &bind).await;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", server.base());
    let _ = out.flush();
    match seconds {
        Some(s) => tokio::time::sleep(std::time::Duration::from_secs(s)).await,
        None => std::future::pending::<()>().await,
    }
}
