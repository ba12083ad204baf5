//! `vantage-impair`: a UDP or TCP forwarder that adds delay, jitter, loss and
//! a rate limit, for demos on a machine without `netem`.
//!
//! ```text
//! # 40 ms more RTT (20 ms ± 5 ms each way), 2 % loss each way, in front of an agent's probe port:
//! vantage-impair udp --listen 127.0.0.1:9000 --upstream 127.0.0.1:7402 \
//!     --delay-ms 20 --jitter-ms 5 --loss 0.02
//! # a 2 Mbit/s viewer link with 30 ms each way in front of an agent's media port:
//! vantage-impair tcp --listen 127.0.0.1:9080 --upstream 127.0.0.1:8080 --delay-ms 30 --rate-kbps 2000
//! ```
//!
//! Every setting applies to each direction unless `--only up|down` is given.
//! Counters are printed every `--stats-every-s` seconds; Ctrl-C (or SIGTERM)
//! prints them once more and exits.

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;
use vantage_tests::impair::{
    GilbertElliott, ImpairHandle, Impairment, Jitter, Link, Options, RateLimit, TcpImpair,
    UdpImpair,
};

#[derive(Debug, Parser)]
#[command(
    name = "vantage-impair",
    about = "UDP/TCP forwarder adding delay, jitter, loss and a rate limit (userspace netem)"
)]
struct Cli {
    #[command(subcommand)]
    proto: Proto,
}

#[derive(Debug, Subcommand)]
enum Proto {
    /// Forward UDP datagrams (one upstream socket per client, NAT-like).
    Udp(Opts),
    /// Forward TCP connections (loss is ignored: the byte stream is reliable).
    Tcp(Opts),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Dist {
    /// Uniform on ±jitter (netem's default table-less behaviour).
    Uniform,
    /// Normal with σ = jitter, cut at ±4σ.
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Only {
    /// Client → upstream only.
    Up,
    /// Upstream → client only.
    Down,
}

#[derive(Debug, Args)]
struct Opts {
    /// Address clients send to / connect to.
    #[arg(long)]
    listen: SocketAddr,
    /// Address traffic is forwarded to.
    #[arg(long)]
    upstream: SocketAddr,
    /// One-way delay added in each direction, milliseconds (RTT grows by twice this).
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Delay variation, milliseconds (see --jitter-dist).
    #[arg(long, default_value_t = 0.0)]
    jitter_ms: f64,
    #[arg(long, value_enum, default_value_t = Dist::Uniform)]
    jitter_dist: Dist,
    /// Never reorder datagrams (default: jitter reorders, as netem does).
    #[arg(long)]
    keep_order: bool,
    /// Loss ratio per direction, 0..1 (UDP).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Make the loss bursty (Gilbert model) with this mean burst length in packets.
    #[arg(long, value_name = "PACKETS", conflicts_with = "spread")]
    burst: Option<f64>,
    /// Lose one datagram in every 1/loss, evenly spaced (the ratio without
    /// sampling noise, for accuracy checks).
    #[arg(long)]
    spread: bool,
    /// Rate limit per direction, kilobits per second.
    #[arg(long)]
    rate_kbps: Option<u64>,
    /// Queue in front of the rate limit, kilobytes (default: 200 ms of traffic, ≥ 16 KiB).
    #[arg(long, requires = "rate_kbps")]
    queue_kb: Option<u32>,
    /// Impair one direction only.
    #[arg(long, value_enum)]
    only: Option<Only>,
    /// PRNG seed for loss and jitter (same seed, same fate per packet sequence).
    #[arg(long, default_value_t = Options::default().seed)]
    seed: u64,
    /// Print counters this often, seconds (0 = only at exit).
    #[arg(long, default_value_t = 5)]
    stats_every_s: u64,
}

impl Opts {
    fn impairment(&self) -> anyhow::Result<Impairment> {
        let ms = |x: f64, what: &str| {
            anyhow::ensure!(x.is_finite() && x >= 0.0, "--{what} must be ≥ 0, got {x}");
            Ok(Duration::from_secs_f64(x / 1000.0))
        };
        let delay = ms(self.delay_ms, "delay-ms")?;
        let j = ms(self.jitter_ms, "jitter-ms")?;
        let jitter = match (j.is_zero(), self.jitter_dist) {
            (true, _) => Jitter::None,
            (false, Dist::Uniform) => Jitter::Uniform(j),
            (false, Dist::Normal) => Jitter::Normal(j),
        };
        let mut link = Link::new()
            .delay(delay)
            .jitter(jitter)
            .keep_order(self.keep_order);
        link = match self.burst {
            Some(b) if self.loss > 0.0 => link.bursty(GilbertElliott::gilbert(self.loss, b)),
            _ if self.spread => link.spread_loss(self.loss),
            _ => link.loss(self.loss),
        };
        if let Some(kbps) = self.rate_kbps {
            let mut r = RateLimit::kbps(kbps);
            if let Some(q) = self.queue_kb {
                r = r.queue_bytes(q.saturating_mul(1000));
            }
            link = link.rate(r);
        }
        let imp = match self.only {
            None => Impairment::both(link),
            Some(Only::Up) => Impairment::none().with_upstream(link),
            Some(Only::Down) => Impairment::none().with_downstream(link),
        };
        imp.validate()?;
        Ok(imp)
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}

async fn run(proto: Proto) -> anyhow::Result<()> {
    let (name, opts) = match &proto {
        Proto::Udp(o) => ("udp", o),
        Proto::Tcp(o) => ("tcp", o),
    };
    let imp = opts.impairment()?;
    let options = Options::default().seed(opts.seed);
    let handle: ImpairHandle = match proto {
        Proto::Udp(_) => UdpImpair::start_with(opts.listen, opts.upstream, imp, options).await,
        Proto::Tcp(_) => TcpImpair::start_with(opts.listen, opts.upstream, imp, options).await,
    }
    .context("cannot start the proxy")?;
    println!(
        "vantage-impair {name}: {} -> {}\n  upstream:   {:?}\n  downstream: {:?}",
        handle.local_addr(),
        handle.upstream(),
        imp.upstream,
        imp.downstream
    );
    let every = Duration::from_secs(opts.stats_every_s.max(1));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let signal = wait_for_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            r = &mut signal => {
                r?;
                break;
            }
            _ = tick.tick(), if opts.stats_every_s > 0 => println!("{}", handle.stats()),
        }
    }
    println!("final: {}", handle.stats());
    handle.stop().await;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(run(cli.proto))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Opts {
        let mut all = vec![
            "vantage-impair",
            "udp",
            "--listen",
            "127.0.0.1:9000",
            "--upstream",
            "127.0.0.1:7402",
        ];
        all.extend(args);
        match Cli::try_parse_from(all).unwrap().proto {
            Proto::Udp(o) | Proto::Tcp(o) => o,
        }
    }

    #[test]
    fn flags_map_to_the_impairment() {
        let imp = opts(&["--delay-ms", "20", "--jitter-ms", "5", "--loss", "0.02"])
            .impairment()
            .unwrap();
        let want = Link::new()
            .delay_ms(20)
            .jitter(Jitter::uniform_ms(5))
            .loss(0.02);
        assert_eq!(imp, Impairment::both(want));

        let imp = opts(&[
            "--loss",
            "0.1",
            "--burst",
            "4",
            "--rate-kbps",
            "2000",
            "--only",
            "down",
            "--jitter-ms",
            "3",
            "--jitter-dist",
            "normal",
        ])
        .impairment()
        .unwrap();
        assert_eq!(imp.upstream, Link::new());
        let d = imp.downstream;
        assert_eq!(d.jitter, Jitter::normal_ms(3));
        assert!((d.loss.mean() - 0.1).abs() < 1e-9);
        assert!(matches!(d.loss, vantage_tests::impair::Loss::Bursty(_)));
        assert_eq!(d.rate.map(|r| r.bits_per_sec), Some(2_000_000));

        let spread = opts(&["--loss", "0.05", "--spread"]).impairment().unwrap();
        assert_eq!(
            spread.upstream.loss,
            vantage_tests::impair::Loss::Spread(0.05)
        );

        assert!(opts(&["--loss", "2"]).impairment().is_err());
        assert!(opts(&["--delay-ms=-1"]).impairment().is_err());
    }
}
