//! Phases `ingest` and `fast`: N agents reporting, reports/s and CPU over a
//! window.

use super::*;

#[derive(Debug, Clone)]
pub(crate) struct IngestResult {
    pub(crate) label: &'static str,
    pub(crate) agents: usize,
    pub(crate) interval_ms: u32,
    pub(crate) enroll_s: f64,
    pub(crate) window_s: f64,
    pub(crate) offered_per_s: f64,
    pub(crate) accepted_per_s: f64,
    pub(crate) cpu: CpuSplit,
    pub(crate) plans_in_window: f64,
    pub(crate) mean_plan_ms: f64,
    pub(crate) versions_per_s: f64,
    pub(crate) store_ops_per_s: f64,
    pub(crate) loadgen_cores: f64,
    /// Whole machine, busy cores (scheduler + load generator + anything else).
    pub(crate) machine_cores: f64,
    pub(crate) nodes_up: f64,
    pub(crate) open_sessions: usize,
    pub(crate) rejected: f64,
    pub(crate) sessions_ended: u64,
    pub(crate) reconnects: u64,
    pub(crate) lost_in_window: u64,
    pub(crate) enroll_retries: u64,
    pub(crate) enroll_failures: usize,
    pub(crate) lost_packets: u64,
    pub(crate) udp_drops: u64,
    pub(crate) sched_socket_drops: u64,
    pub(crate) client_socket_drops: u64,
    pub(crate) rss_mib: f64,
}

impl IngestResult {
    pub(crate) fn per_core(&self) -> f64 {
        if self.cpu.total > 0.0 {
            self.accepted_per_s / self.cpu.total
        } else {
            0.0
        }
    }

    /// Reports/s per core of the ingest path alone: the QUIC thread, where
    /// every report is received, decoded and applied.
    pub(crate) fn per_ingest_core(&self) -> f64 {
        if self.cpu.quic > 0.0 {
            self.accepted_per_s / self.cpu.quic
        } else {
            0.0
        }
    }

    pub(crate) fn print(&self) {
        println!(
            "## Phase `{}`: {} agents × every {} ms",
            self.label, self.agents, self.interval_ms
        );
        println!();
        println!("| measure | value |");
        println!("|---|---|");
        println!(
            "| enrollment (QUIC handshake + Hello/Welcome) | {} agents in {:.1} s ({:.0}/s) |",
            self.agents,
            self.enroll_s,
            self.agents as f64 / self.enroll_s.max(1e-9)
        );
        println!("| window | {:.1} s |", self.window_s);
        println!(
            "| reports offered (load generator) | {:.0}/s |",
            self.offered_per_s
        );
        println!(
            "| reports accepted (scheduler, `reports_total`) | {:.0}/s |",
            self.accepted_per_s
        );
        println!(
            "| scheduler CPU: total / QUIC ingest thread / tokio workers / planner and the rest | {:.2} / {:.2} / {:.2} / {:.2} cores |",
            self.cpu.total, self.cpu.quic, self.cpu.workers, self.cpu.rest
        );
        println!(
            "| **reports/s per scheduler core (total CPU)** | **{:.0}** |",
            self.per_core()
        );
        println!(
            "| reports/s per QUIC-ingest-thread core (ingest path alone) | {:.0} |",
            self.per_ingest_core()
        );
        let mean = if self.mean_plan_ms > 0.0 {
            format!("{:.0} ms", self.mean_plan_ms)
        } else {
            "n/a".to_owned()
        };
        println!(
            "| plans finished in the window / their mean duration | {:.0} / {mean} |",
            self.plans_in_window
        );
        println!(
            "| new route-table versions / store ops | {:.0}/s / {:.0}/s |",
            self.versions_per_s, self.store_ops_per_s
        );
        println!(
            "| load generator CPU / whole machine busy (other processes) | {:.2} / {:.2} ({:.2}) cores |",
            self.loadgen_cores,
            self.machine_cores,
            (self.machine_cores - self.cpu.total - self.loadgen_cores).max(0.0)
        );
        println!(
            "| nodes up / client sessions open at the end | {:.0} / {} |",
            self.nodes_up, self.open_sessions
        );
        println!(
            "| sessions dropped by the scheduler: in the window / whole run (reconnected) | {} / {} ({}) |",
            self.lost_in_window, self.sessions_ended, self.reconnects
        );
        println!(
            "| rejections / enrollment retries / failed enrollments | {:.0} / {} / {} |",
            self.rejected, self.enroll_retries, self.enroll_failures
        );
        println!(
            "| in the window: QUIC packets declared lost (client view) | {} |",
            self.lost_packets
        );
        println!(
            "| in the window: UDP datagrams dropped, receive buffer full: scheduler socket / load-generator sockets (all UDP) | {} / {} ({}) |",
            self.sched_socket_drops, self.client_socket_drops, self.udp_drops
        );
        println!("| scheduler RSS | {:.0} MiB |", self.rss_mib);
        println!();
    }
}

pub(crate) async fn ingest_phase(
    args: &Args,
    bin: &Path,
    http: &reqwest::Client,
    label: &'static str,
    interval_ms: u32,
) -> Result<IngestResult> {
    eprintln!("[{label}] starting the scheduler (report interval {interval_ms} ms)");
    let mut sched = Scheduler::start(bin, interval_ms, keep_log(args, label)?)?;
    sched.wait_ready(http).await?;
    let client = Client::new(&sched, args.client_endpoints)?;
    eprintln!("[{label}] enrolling {} agents", args.agents);
    let fleet = match Fleet::enroll(&client, sched.quic, args.agents, args.concurrency).await {
        Ok(f) => f,
        Err(e) => bail!(
            "[{label}] enrollment: {e:#}\nscheduler log:\n{}",
            sched.log_tail()
        ),
    };
    eprintln!(
        "[{label}] enrolled in {:.1} s; warming up {} s",
        fleet.enroll_time.as_secs_f64(),
        args.warmup_s
    );
    let warmup =
        Duration::from_secs(args.warmup_s).max(Duration::from_millis(u64::from(interval_ms) * 2));
    tokio::time::sleep(warmup).await;

    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let m0 = sched.metrics(http).await?;
    let c0 = sched.cpu()?;
    let l0 = CpuSample::take(std::process::id())?;
    let s0 = fleet.stats.reports_sent.load(Ordering::Relaxed);
    let sample = fleet.sample_ids();
    let v0 = sched.sample_versions(http, &sample).await?;
    let lost0 = fleet.lost_packets();
    let e0 = fleet.stats.sessions_ended.load(Ordering::Relaxed);
    let udp0 = udp_rcvbuf_errors();
    let client_ports = client.ports();
    let sd0 = udp_socket_drops(&[sched.quic.port()]);
    let cd0 = udp_socket_drops(&client_ports);
    let sys0 = system_jiffies();
    tokio::time::sleep(Duration::from_secs(args.window_s.max(1))).await;
    let m1 = sched.metrics(http).await?;
    let c1 = sched.cpu()?;
    let l1 = CpuSample::take(std::process::id())?;
    let s1 = fleet.stats.reports_sent.load(Ordering::Relaxed);
    let v1 = sched.sample_versions(http, &sample).await?;
    let lost1 = fleet.lost_packets();
    let e1 = fleet.stats.sessions_ended.load(Ordering::Relaxed);
    let udp1 = udp_rcvbuf_errors();
    let sd1 = udp_socket_drops(&[sched.quic.port()]);
    let cd1 = udp_socket_drops(&client_ports);
    let sys1 = system_jiffies();
    let window_s = c1.at.duration_since(c0.at).as_secs_f64();

    let d = |k: &str| m1.get(k) - m0.get(k);
    let plans = d("vantage_scheduler_plan_duration_seconds_count");
    let result = IngestResult {
        label,
        agents: fleet.enrolled(),
        interval_ms,
        enroll_s: fleet.enroll_time.as_secs_f64(),
        window_s,
        offered_per_s: (s1 - s0) as f64 / window_s,
        accepted_per_s: d("vantage_scheduler_reports_total") / window_s,
        cpu: c0.split_until(&c1, workers),
        plans_in_window: d("vantage_scheduler_plan_duration_seconds_count"),
        mean_plan_ms: if plans > 0.0 {
            d("vantage_scheduler_plan_duration_seconds_sum") / plans * 1e3
        } else {
            0.0
        },
        versions_per_s: v1.saturating_sub(v0) as f64 / window_s * fleet.enrolled() as f64
            / sample.len().max(1) as f64,
        store_ops_per_s: d("vantage_scheduler_store_ops_total") / window_s,
        loadgen_cores: l0.cores_until(&l1),
        machine_cores: system_cores(sys0, sys1, window_s),
        nodes_up: m1.get("vantage_scheduler_nodes{state=\"up\"}"),
        open_sessions: fleet.open_sessions(),
        rejected: m1.sum_family("vantage_scheduler_telemetry_rejected_total"),
        sessions_ended: fleet.stats.sessions_ended.load(Ordering::Relaxed),
        reconnects: fleet.stats.reconnects.load(Ordering::Relaxed),
        lost_in_window: e1.saturating_sub(e0),
        enroll_retries: fleet.stats.enroll_retries.load(Ordering::Relaxed),
        enroll_failures: fleet.failures.len(),
        lost_packets: lost1.saturating_sub(lost0),
        udp_drops: udp1.saturating_sub(udp0),
        sched_socket_drops: sd1.saturating_sub(sd0),
        client_socket_drops: cd1.saturating_sub(cd0),
        rss_mib: c1.rss_kib as f64 / 1024.0,
    };
    fleet.shutdown().await;
    drop(sched);
    client.close().await;
    Ok(result)
}

// ---------------------------------------------------------------------------
// Route push latency
// ---------------------------------------------------------------------------
