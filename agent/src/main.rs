//! `vantage-agent`: parse the configuration, set up logging, run the agent
//! until SIGINT/SIGTERM, then shut down within a grace period.

use anyhow::Context;
use prometheus_client::registry::Registry;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use vantage_agent::Agent;
use vantage_agent::config::{Config, ConfigError, LogFormat};

/// How long shutdown may take before the process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(c) => c,
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("vantage-agent: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vantage-agent: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vantage-agent: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, without repeating a cause that a
/// message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let agent = Agent::bind(config, Registry::default())
        .await
        .context("startup")?;
    let cancel = CancellationToken::new();
    let run = agent.run(cancel.clone());
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => return r.context("agent"),
        s = shutdown_signal() => {
            s.context("installing signal handlers")?;
            tracing::info!("shutdown requested");
        }
    }
    cancel.cancel();
    match tokio::time::timeout(SHUTDOWN_GRACE, run).await {
        Ok(r) => r.context("agent"),
        Err(_) => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "shutdown grace period expired; exiting");
            Ok(())
        }
    }
}

async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await
    }
}
