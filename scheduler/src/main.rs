//! `vantage-scheduler` binary: configuration, logging, signals.
//!
//! SIGTERM or SIGINT stops the scheduler cleanly: listeners stop accepting,
//! agents' telemetry connections are closed with `SHUTTING_DOWN` (they keep
//! their route tables and reconnect with backoff), route streams end, the
//! batched store writer is flushed and the database closed; exit status 0.
//! A second signal exits at once with status 1 (queued store writes may be
//! lost).

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use vantage_scheduler::config::{CertsCommand, Cli, Command, Config, LogFormat};

/// mimalloc instead of the system allocator: every report is decoded into
/// fresh strings and vectors and freed again on the ingest thread, thousands
/// of times a second; glibc's malloc/free were ~10 % of that thread's CPU
/// (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Certs(cmd)) = &cli.command {
        if let CertsCommand::Agent { node_id, .. } = cmd
            && !vantage_shared::auth::valid_node_id(node_id)
        {
            eprintln!("vantage-scheduler: invalid node id {node_id:?}");
            return std::process::ExitCode::from(2);
        }
        return match cmd.run() {
            Ok(files) => {
                for f in files {
                    println!("wrote {}", f.display());
                }
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("vantage-scheduler certs: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let config = match Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vantage-scheduler: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    match run(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vantage-scheduler: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signals.cancel();
            wait_for_signal().await;
            tracing::warn!("second signal: exiting without finishing the shutdown");
            std::process::exit(1);
        });
        vantage_scheduler::server::run(config, shutdown)
            .await
            .context("scheduler failed")
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, only Ctrl-C through tokio remains.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
