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
    let mut capacity = haul_test::Capacity {
        k: usize::MAX,
        latency: std::time::Duration::ZERO,
        beyond: haul_test::Beyond::Refuse { retry_after: 1 },
    };
    let mut limited = false;
    let mut log: Option<String> = None;
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
            "--unavailable-retry-after" => mix.retry_after = value().parse().unwrap_or(0),
            "--latency-ms" => {
                capacity.latency = std::time::Duration::from_millis(value().parse().unwrap_or(0));
                limited = true;
            }
            "--capacity" => {
                capacity.k = value().parse().unwrap_or(usize::MAX);
                limited = true;
            }
            "--queue" => capacity.beyond = haul_test::Beyond::Queue,
            "--log" => log = Some(value()),
            "--refuse-retry-after" => {
                capacity.beyond = haul_test::Beyond::Refuse {
                    retry_after: value().parse().unwrap_or(1),
                };
            }
            _ => {
                let mut err = std::io::stderr();
                let _ = writeln!(
                    err,
                    "usage: haul-testserver [--bind 127.0.0.1:PORT] [--seconds N] [--seed N] \
                     [--unavailable PCT] [--unavailable-retry-after S] [--reset PCT] [--short PCT] \
                     [--changed-validator PCT] [--latency-ms MS] [--capacity K] \
                     [--queue | --refuse-retry-after S] [--log FILE]\n\
                     serves /f/NAME?size=N (see crates/haul-test/src/fault.rs for fault parameters)"
                );
                std::process::exit(2);
            }
        }
    }
    let server = if limited {
        haul_test::FaultServer::start_with_both(mix, capacity, &bind).await
    } else {
        haul_test::FaultServer::start_with(mix, &bind).await
    };
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", server.base());
    let _ = out.flush();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let wait = async {
        match seconds {
            Some(s) => tokio::time::sleep(std::time::Duration::from_secs(s)).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = wait => {}
        _ = async { match &mut term { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
    // `--log FILE`: one line per request answered: seconds since start, status, path.
    if let Some(path) = log {
        let mut text = String::new();
        for entry in server.log() {
            text.push_str(&format!(
                "{:.4} {} {}\n",
                entry.at.as_secs_f64(),
                entry.status,
                entry.path
            ));
        }
        let _ = std::fs::write(path, text);
    }
}
