//! `vantage-agent`: parse the configuration, set up logging, run the agent
//! until SIGTERM/SIGINT, then drain and shut down.
//!
//! The first signal starts a graceful drain ([`vantage_agent::drain`]): the
//! scheduler is told, new viewers are refused, and the process waits until
//! the viewers have left or `--drain-grace-s` has passed; then every
//! component stops (within [`SHUTDOWN_GRACE`]) and the process exits 0. A
//! second signal skips what is left of the drain and exits at once.

use anyhow::Context;
use prometheus_client::registry::Registry;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;
use vantage_agent::Agent;
use vantage_agent::config::{Config, ConfigError, LogFormat};
use vantage_agent::drain::DrainEnd;

/// How long stopping the components may take (after the drain) before the
/// process exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// After a second signal: time for the QUIC close frame to leave.
const FORCED_EXIT_GRACE: Duration = Duration::from_millis(300);

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
    raise_fd_limit();
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
    let result = runtime.block_on(run(config));
    // Tasks still running (a forced exit) are dropped, not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
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

/// Raises the soft limit of open files to the hard limit: every viewer,
/// comment connection and upstream is a descriptor, and distributions
/// start services with a soft limit of 1024 (docs/operations.md, "File
/// descriptors and kernel settings").
fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current.is_none() || lim.current == lim.maximum {
        info!(soft = ?lim.current, hard = ?lim.maximum, "open file limit");
        return;
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    ) {
        Ok(()) => {
            info!(from = ?lim.current, to = ?lim.maximum, "raised the open file limit to the hard limit")
        }
        Err(e) => {
            warn!(soft = ?lim.current, hard = ?lim.maximum, error = %e, "could not raise the open file limit")
        }
    }
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
    let mut signals = Signals::new().context("installing signal handlers")?;
    let agent = Agent::bind(config, Registry::default())
        .await
        .context("startup")?;
    let drain = agent.drain();
    let relay = agent.relay();
    let cancel = CancellationToken::new();
    let run = agent.run(cancel.clone());
    tokio::pin!(run);
    let signal = tokio::select! {
        r = &mut run => return r.context("agent"),
        s = signals.next() => s,
    };

    drain.start();
    info!(
        signal,
        grace = ?drain.grace(),
        viewers = relay.viewer_count(),
        "draining: refusing new viewers, waiting for connected ones to leave (a second signal exits at once)"
    );
    let forced = tokio::select! {
        r = &mut run => return r.context("agent"),
        end = drain.wait_idle(|| relay.viewer_count()) => {
            match end {
                DrainEnd::Idle => info!(announced = drain.announced(), "drained: no viewer left"),
                DrainEnd::GraceExpired { viewers } => warn!(
                    viewers,
                    grace = ?drain.grace(),
                    "drain grace period over; disconnecting the remaining viewers"
                ),
            }
            false
        }
        s = signals.next() => {
            warn!(signal = s, viewers = relay.viewer_count(), "second signal: exiting now");
            true
        }
    };

    cancel.cancel();
    let limit = if forced {
        FORCED_EXIT_GRACE
    } else {
        SHUTDOWN_GRACE
    };
    tokio::select! {
        r = tokio::time::timeout(limit, &mut run) => match r {
            Ok(r) => r.context("agent"),
            Err(_) => {
                if !forced {
                    warn!(grace = ?limit, "components did not stop in time; exiting");
                }
                Ok(())
            }
        },
        s = signals.next() => {
            warn!(signal = s, "second signal: exiting now");
            Ok(())
        }
    }
}

/// SIGTERM and SIGINT.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The name of the next signal received.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
