//! Phase `routes`: M agents subscribed over gRPC (each to the directory
//! entries of the channels it relays); weight changes timed until every
//! agent ACKed; stream changes timed until the stream's subscribers ACKed
//! its entry.

use super::*;

/// A table received (and ACKed) by a subscribed agent.
#[derive(Debug, Clone)]
pub(crate) struct AckEvent {
    pub(crate) idx: usize,
    pub(crate) weights_version: u64,
    /// The table's directory entries, (stream, origin) — a whole table:
    /// all of them; a delta: those that changed.
    pub(crate) streams: Vec<(String, String)>,
    pub(crate) at: Instant,
}

/// How a simulated agent decodes the route tables it ACKs (`--table-decode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TableDecode {
    /// Only the fields the ACK needs ([`TableHead`]).
    Head,
    /// The whole [`RouteTable`], as `vantage-agent` does.
    Full,
}

/// The fields of a `RouteTable` (routes.proto) an ACK needs. Decoding a
/// table as this message skips its routes and probe targets without
/// building them: on one VM the 1,000 simulated agents' decoding competes
/// for the CPU the scheduler is measured on, where real agents decode on
/// their own machines.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TableHead {
    #[prost(uint64, tag = "2")]
    pub(crate) version: u64,
    #[prost(string, tag = "3")]
    pub(crate) nonce: String,
    #[prost(uint64, tag = "7")]
    pub(crate) weights_version: u64,
    /// The directory entries (stream → origin): the stream changes' signal.
    #[prost(message, repeated, tag = "13")]
    pub(crate) directory: Vec<vantage_proto::v1::DirectoryEntry>,
}

impl From<RouteTable> for TableHead {
    fn from(t: RouteTable) -> Self {
        TableHead {
            version: t.version,
            nonce: t.nonce,
            weights_version: t.weights_version,
            directory: t.directory,
        }
    }
}

/// The tables of one RouteDiscovery stream, decoded as `decode` says.
enum Tables {
    Head(tonic::Streaming<TableHead>),
    Full(tonic::Streaming<RouteTable>),
}

impl Tables {
    async fn open(
        channel: tonic::transport::Channel,
        request: tonic::Request<ReceiverStream<RouteRequest>>,
        decode: TableDecode,
    ) -> Result<Self> {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.context("gRPC channel not ready")?;
        let path = || {
            tonic::codegen::http::uri::PathAndQuery::from_static(
                "/vantage.v1.RouteDiscovery/StreamRoutes",
            )
        };
        Ok(match decode {
            TableDecode::Head => {
                let codec = tonic_prost::ProstCodec::<RouteRequest, TableHead>::default();
                Tables::Head(grpc.streaming(request, path(), codec).await?.into_inner())
            }
            TableDecode::Full => {
                let codec = tonic_prost::ProstCodec::<RouteRequest, RouteTable>::default();
                Tables::Full(grpc.streaming(request, path(), codec).await?.into_inner())
            }
        })
    }

    async fn next(&mut self) -> Result<Option<TableHead>, tonic::Status> {
        match self {
            Tables::Head(s) => s.message().await,
            Tables::Full(s) => Ok(s.message().await?.map(TableHead::from)),
        }
    }
}

/// One agent's RouteDiscovery stream: ACK every table, report each ACK.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn subscribe(
    decode: TableDecode,
    grpc: SocketAddr,
    tls: ClientTlsConfig,
    idx: usize,
    node: String,
    credential: String,
    agent: Arc<AgentShared>,
    events: mpsc::UnboundedSender<AckEvent>,
    connected: tokio::sync::oneshot::Sender<Result<()>>,
    sem: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let setup = async {
        let _permit = sem.acquire().await?;
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))?
            .tls_config(tls)?
            .connect_timeout(HANDSHAKE_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .context("gRPC connect")?;
        let (tx, rx) = mpsc::channel::<RouteRequest>(8);
        let n = agent.fleet_size.load(Ordering::Relaxed) as usize;
        tx.send(RouteRequest {
            node_id: node.clone(),
            subscribe: agent_model::relayed(idx, n)
                .into_iter()
                .map(|c| format!("live/ch{c}"))
                .collect(),
            ..RouteRequest::default()
        })
        .await?;
        agent.set_routes_tx(tx.clone());
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert(
            "authorization",
            tonic::metadata::MetadataValue::try_from(format!("Bearer {credential}"))?,
        );
        let tables = Tables::open(channel, request, decode)
            .await
            .context("StreamRoutes")?;
        anyhow::Ok((tx, tables))
    };
    let (tx, mut stream) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, setup).await {
        Ok(Ok(s)) => {
            let _ = connected.send(Ok(()));
            s
        }
        Ok(Err(e)) => {
            let _ = connected.send(Err(e));
            return;
        }
        Err(_) => {
            let _ = connected.send(Err(anyhow!("subscription timed out")));
            return;
        }
    };
    let deadline = tokio::time::sleep(PHASE_DEADLINE);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = &mut deadline => return,
            msg = stream.next() => match msg {
                Ok(Some(table)) => {
                    let ack = RouteRequest {
                        node_id: node.clone(),
                        version_info: table.version,
                        response_nonce: table.nonce.clone(),
                        ..RouteRequest::default()
                    };
                    if tx.send(ack).await.is_err() {
                        return;
                    }
                    agent.route_version.store(table.version, Ordering::Relaxed);
                    let _ = events.send(AckEvent {
                        idx,
                        weights_version: table.weights_version,
                        streams: table.directory.into_iter().map(|d| (d.stream, d.origin)).collect(),
                        at: Instant::now(),
                    });
                }
                Ok(None) | Err(_) => return,
            }
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RoutesResult {
    pub(crate) agents: usize,
    pub(crate) changes: usize,
    pub(crate) table_decode: TableDecode,
    /// Per change: PUT → all agents ACKed, ms.
    pub(crate) all_acked_ms: Vec<f64>,
    /// Per change: PUT round trip, ms.
    pub(crate) put_ms: Vec<f64>,
    /// Per (change, agent): PUT → that agent ACKed, ms.
    pub(crate) per_agent_ms: Vec<f64>,
    pub(crate) confirmed: usize,
    pub(crate) sampled: usize,
    pub(crate) cpu: CpuSplit,
    pub(crate) loadgen_cores: f64,
    pub(crate) machine_cores: f64,
    pub(crate) mean_plan_ms: f64,
    /// Mean of each stage of a planning round (views, plan, publish), ms;
    /// `None` for schedulers without `plan_stage_duration_seconds`.
    pub(crate) stage_ms: Option<[f64; 3]>,
    pub(crate) pushes: f64,
    /// Route tables sent and their bytes over the weight changes, by kind
    /// (full, delta).
    pub(crate) weight_sent: Sent,
    /// The stream changes: each one's time until every subscriber ACKed a
    /// table naming the new stream's origin, and what was sent.
    pub(crate) stream_acked_ms: Vec<f64>,
    pub(crate) stream_sent: Sent,
    /// Subscribers per stream change.
    pub(crate) stream_subscribers: usize,
    /// Per (change, subscriber): subscription sent → entry ACKed, ms.
    pub(crate) subscribe_ms: Vec<f64>,
    /// What answering the subscriptions sent.
    pub(crate) subscribe_sent: Sent,
    pub(crate) acks: f64,
    pub(crate) nacks: f64,
    pub(crate) subscribe_s: f64,
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

impl RoutesResult {
    pub(crate) fn all_acked(&self) -> Vec<f64> {
        sorted(&self.all_acked_ms)
    }

    pub(crate) fn print(&self) {
        let all = self.all_acked();
        let per = sorted(&self.per_agent_ms);
        let put = sorted(&self.put_ms);
        println!(
            "## Phase `routes`: {} agents (QUIC reports at 1 s + gRPC subscription), {} weight changes, tables decoded: {}",
            self.agents,
            self.changes,
            match self.table_decode {
                TableDecode::Head => "version, nonce and weights version (--table-decode head)",
                TableDecode::Full => "whole (--table-decode full)",
            }
        );
        println!();
        println!("| measure | p50 | p95 | p99 | max |");
        println!("|---|---|---|---|---|");
        let row = |name: &str, v: &[f64]| {
            println!(
                "| {name} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
                percentile(v, 50.0),
                percentile(v, 95.0),
                percentile(v, 99.0),
                v.last().copied().unwrap_or(f64::NAN)
            );
        };
        row("**PUT /v1/weights → all agents ACKed**", &all);
        row("PUT → one agent ACKed (all agents × changes)", &per);
        row("PUT /v1/weights round trip", &put);
        let streams = sorted(&self.stream_acked_ms);
        if !streams.is_empty() {
            row(
                &format!(
                    "**new stream at an origin → its {} subscribers ACKed its directory entry**",
                    self.stream_subscribers
                ),
                &streams,
            );
            row(
                "subscription to a stream → entry ACKed (subscribers × changes)",
                &sorted(&self.subscribe_ms),
            );
        }
        println!();
        println!(
            "- on the wire per weight change: {}",
            self.weight_sent.per_change(self.changes)
        );
        if !streams.is_empty() {
            println!(
                "- on the wire per stream change: {}",
                self.stream_sent.per_change(streams.len())
            );
            println!(
                "- on the wire per {} subscriptions: {}",
                self.stream_subscribers,
                self.subscribe_sent.per_change(streams.len())
            );
        }
        println!();
        println!("| measure | value |");
        println!("|---|---|");
        println!(
            "| subscription setup ({} gRPC/TLS streams, first table ACKed) | {:.1} s |",
            self.agents, self.subscribe_s
        );
        println!(
            "| GET /v1/routes/{{id}} acked_version == version (sample) | {}/{} |",
            self.confirmed, self.sampled
        );
        println!(
            "| tables pushed / ACKs / NACKs during the changes | {:.0} / {:.0} / {:.0} |",
            self.pushes, self.acks, self.nacks
        );
        match self.stage_ms {
            Some([views, plan, publish]) => println!(
                "| mean planning round: total (node views / plan / publish) | {:.0} ms ({views:.1} / {plan:.1} / {publish:.1} ms) |",
                self.mean_plan_ms
            ),
            None => println!("| mean planning round | {:.0} ms |", self.mean_plan_ms),
        }
        println!(
            "| CPU during the changes: scheduler total / QUIC ingest thread / tokio workers / planner and the rest | {:.2} / {:.2} / {:.2} / {:.2} cores |",
            self.cpu.total, self.cpu.quic, self.cpu.workers, self.cpu.rest
        );
        println!(
            "| CPU during the changes: load generator / whole machine busy | {:.2} / {:.2} cores |",
            self.loadgen_cores, self.machine_cores
        );
        println!();
    }
}

/// Route tables sent between two `/metrics` samples, by kind.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sent {
    pub(crate) full: f64,
    pub(crate) delta: f64,
    pub(crate) full_bytes: f64,
    pub(crate) delta_bytes: f64,
}

impl Sent {
    fn add(&mut self, o: &Sent) {
        self.full += o.full;
        self.delta += o.delta;
        self.full_bytes += o.full_bytes;
        self.delta_bytes += o.delta_bytes;
    }

    fn between(m0: &Metrics, m1: &Metrics) -> Self {
        let d = |k: &str| m1.get(k) - m0.get(k);
        Sent {
            full: d("vantage_scheduler_route_updates_total{kind=\"full\"}"),
            delta: d("vantage_scheduler_route_updates_total{kind=\"delta\"}"),
            full_bytes: d("vantage_scheduler_route_push_bytes_total{kind=\"full\"}"),
            delta_bytes: d("vantage_scheduler_route_push_bytes_total{kind=\"delta\"}"),
        }
    }

    /// "N deltas (B bytes each), M whole tables (B bytes each), per change".
    pub(crate) fn per_change(&self, changes: usize) -> String {
        let c = changes.max(1) as f64;
        let each = |bytes: f64, n: f64| if n > 0.0 { bytes / n } else { 0.0 };
        format!(
            "{:.0} deltas ({:.0} B each) and {:.0} whole tables ({:.0} B each) per change; {:.0} B on the wire per change",
            self.delta / c,
            each(self.delta_bytes, self.delta),
            self.full / c,
            each(self.full_bytes, self.full),
            (self.delta_bytes + self.full_bytes) / c
        )
    }
}

/// Waits until agents `who` have ACKed a table listing stream `key` in
/// their directory (with an origin when `live`, else with none); returns
/// per-agent times from `t0`, ms.
pub(crate) async fn wait_have(
    rx: &mut mpsc::UnboundedReceiver<AckEvent>,
    acked: &mut [u64],
    who: &[usize],
    key: &str,
    live: bool,
    t0: Instant,
    deadline: tokio::time::Instant,
) -> Result<Vec<f64>> {
    let mut have: Vec<bool> = vec![true; acked.len()];
    for &i in who {
        have[i] = false;
    }
    let mut times = Vec::with_capacity(who.len());
    let mut missing = have.iter().filter(|h| !**h).count();
    while missing > 0 {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| anyhow!("{missing} agents did not get stream {key} in time"))?
            .ok_or_else(|| anyhow!("every subscription ended"))?;
        acked[ev.idx] = acked[ev.idx].max(ev.weights_version);
        let listed = ev
            .streams
            .iter()
            .any(|(s, o)| s == key && o.is_empty() != live);
        if !have[ev.idx] && listed {
            have[ev.idx] = true;
            missing -= 1;
            times.push(ev.at.duration_since(t0).as_secs_f64() * 1e3);
        }
    }
    Ok(times)
}

/// Waits until every agent has ACKed a table with `weights_version >= v`;
/// returns per-agent times from `t0`, ms.
pub(crate) async fn wait_all_acked(
    rx: &mut mpsc::UnboundedReceiver<AckEvent>,
    acked: &mut [u64],
    v: u64,
    t0: Instant,
    deadline: tokio::time::Instant,
) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(acked.len());
    let mut missing = acked.iter().filter(|&&w| w < v).count();
    while missing > 0 {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| anyhow!("{missing} agents did not ACK weights version {v} in time"))?
            .ok_or_else(|| anyhow!("every subscription ended"))?;
        let slot = &mut acked[ev.idx];
        if *slot < v && ev.weights_version >= v {
            missing -= 1;
            times.push(ev.at.duration_since(t0).as_secs_f64() * 1e3);
        }
        *slot = (*slot).max(ev.weights_version);
    }
    Ok(times)
}

pub(crate) async fn routes_phase(
    args: &Args,
    bin: &Path,
    http: &reqwest::Client,
) -> Result<RoutesResult> {
    let m = args.route_agents.max(1);
    eprintln!("[routes] starting the scheduler");
    let mut sched = Scheduler::start(bin, 1_000, keep_log(args, "routes")?)?;
    sched.wait_ready(http).await?;
    let client = Client::new(&sched, args.client_endpoints)?;
    eprintln!("[routes] enrolling {m} agents over QUIC");
    let fleet = Fleet::enroll(&client, sched.quic, m, args.concurrency)
        .await
        .with_context(|| format!("[routes] enrollment; scheduler log:\n{}", sched.log_tail()))?;

    eprintln!("[routes] subscribing {m} agents over gRPC");
    let started = Instant::now();
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<AckEvent>();
    let sem = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut subs = JoinSet::new();
    let mut connected = Vec::with_capacity(m);
    for (idx, a) in fleet.agents.iter().enumerate() {
        let Some(a) = a else { continue };
        let (ctx, crx) = tokio::sync::oneshot::channel();
        connected.push((a.node_id.clone(), crx));
        subs.spawn(subscribe(
            args.table_decode,
            sched.grpc,
            client.grpc_tls.clone(),
            idx,
            a.node_id.clone(),
            a.credential.clone(),
            a.shared.clone(),
            ev_tx.clone(),
            ctx,
            sem.clone(),
            fleet.stop.clone(),
        ));
    }
    drop(ev_tx);
    let setup_deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for (id, c) in connected {
        match tokio::time::timeout_at(setup_deadline, c).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => bail!("{id} could not subscribe: {e:#}"),
            Ok(Err(_)) => bail!("{id} subscription task ended"),
            Err(_) => bail!("gRPC subscriptions not set up within 120 s"),
        }
    }
    // Every agent holds and has ACKed a first table. Agents that could not
    // enroll (at most 1 %) count as done throughout.
    let mut acked: Vec<u64> = fleet
        .agents
        .iter()
        .map(|a| if a.is_some() { 0 } else { u64::MAX })
        .collect();
    let mut first: Vec<bool> = fleet.agents.iter().map(Option::is_none).collect();
    let mut have = first.iter().filter(|f| **f).count();
    let m = fleet.enrolled();
    while have < first.len() {
        let ev = tokio::time::timeout_at(setup_deadline, ev_rx.recv())
            .await
            .map_err(|_| {
                anyhow!(
                    "{} agents got no first table within 120 s",
                    first.len() - have
                )
            })?
            .ok_or_else(|| anyhow!("subscriptions ended"))?;
        if !first[ev.idx] {
            first[ev.idx] = true;
            have += 1;
        }
        acked[ev.idx] = acked[ev.idx].max(ev.weights_version);
    }
    let subscribe_s = started.elapsed().as_secs_f64();
    eprintln!("[routes] all subscribed in {subscribe_s:.1} s; settling 3 s");
    tokio::time::sleep(Duration::from_secs(3)).await;

    let m0 = sched.metrics(http).await?;
    let c0 = sched.cpu()?;
    let l0 = CpuSample::take(std::process::id())?;
    let sys0 = system_jiffies();
    let mut all_acked_ms = Vec::new();
    let mut put_ms = Vec::new();
    let mut per_agent_ms = Vec::new();
    let mut rng = StdRng::seed_from_u64(42);
    let mut last_version = 0;
    let weights_url = format!("{}/v1/weights", sched.base);
    for k in 0..args.changes {
        while let Ok(ev) = ev_rx.try_recv() {
            acked[ev.idx] = acked[ev.idx].max(ev.weights_version);
        }
        let latency = if k % 2 == 0 { 0.45 } else { 0.35 };
        let t0 = Instant::now();
        let resp = http
            .put(&weights_url)
            .json(
                &serde_json::json!({ "latency": latency, "comment": format!("bench change {k}") }),
            )
            .send()
            .await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        put_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        if !status.is_success() {
            bail!("PUT /v1/weights: {status} {body}");
        }
        let v = body["version"]
            .as_u64()
            .ok_or_else(|| anyhow!("PUT /v1/weights answered without a version: {body}"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let times = wait_all_acked(&mut ev_rx, &mut acked, v, t0, deadline)
            .await
            .with_context(|| format!("weight change {k} (version {v})"))?;
        let all = times.iter().copied().fold(0.0, f64::max);
        eprintln!("[routes] change {k}: weights v{v} ACKed by all {m} agents in {all:.1} ms");
        all_acked_ms.push(all);
        per_agent_ms.extend(times);
        last_version = v;
        // Let the system settle, then change again at a random phase of the
        // periodic replan.
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..800))).await;
    }
    let m1 = sched.metrics(http).await?;
    let c1 = sched.cpu()?;
    let l1 = CpuSample::take(std::process::id())?;
    let sys1 = system_jiffies();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Stream changes: `--stream-subscribers` agents (edges with viewers
    // waiting) subscribe to a stream not published yet and get its entry
    // without an origin; then an origin agent starts publishing it (its
    // report goes out at once), timed until every subscriber ACKed a table
    // naming the origin. The other agents get nothing.
    let mut stream_acked_ms = Vec::new();
    let mut subscribe_ms = Vec::new();
    let mut stream_sent = Sent::default();
    let mut subscribe_sent = Sent::default();
    let enrolled: Vec<usize> = (0..fleet.agents.len())
        .filter(|&i| fleet.agents[i].is_some())
        .collect();
    let watchers = args.stream_subscribers.min(enrolled.len());
    for k in 0..args.stream_changes {
        while let Ok(ev) = ev_rx.try_recv() {
            acked[ev.idx] = acked[ev.idx].max(ev.weights_version);
        }
        let o = origin_agent(k, fleet.agents.len());
        let Some(agent) = fleet.agents.get(o).and_then(Option::as_ref) else {
            continue;
        };
        let key = format!("live/new{k}");
        let who: Vec<usize> = rand::seq::index::sample(&mut rng, enrolled.len(), watchers)
            .into_iter()
            .map(|i| enrolled[i])
            .filter(|&i| i != o)
            .collect();
        let ma = sched.metrics(http).await?;
        let t0 = Instant::now();
        for &i in &who {
            if let Some(a) = &fleet.agents[i] {
                a.shared.subscribe(&key).await;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let times = wait_have(&mut ev_rx, &mut acked, &who, &key, false, t0, deadline)
            .await
            .with_context(|| format!("subscriptions to {key}"))?;
        subscribe_ms.extend(times);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mb = sched.metrics(http).await?;
        let t0 = Instant::now();
        agent.shared.publish(key.clone());
        let times = wait_have(&mut ev_rx, &mut acked, &who, &key, true, t0, deadline)
            .await
            .with_context(|| format!("stream change {k} ({key})"))?;
        let all = times.iter().copied().fold(0.0, f64::max);
        eprintln!(
            "[routes] stream change {k}: {key} in its {} subscribers' tables in {all:.1} ms",
            who.len()
        );
        stream_acked_ms.push(all);
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..800))).await;
        let mc = sched.metrics(http).await?;
        subscribe_sent.add(&Sent::between(&ma, &mb));
        stream_sent.add(&Sent::between(&mb, &mc));
    }

    // Cross-check with the API: the agents' ACKs are recorded.
    let sample = fleet.sample_ids();
    let mut confirmed = 0;
    for id in &sample {
        let url = format!("{}/v1/routes/{id}", sched.base);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let r: serde_json::Value = http.get(&url).send().await?.json().await?;
            let version = r["version"].as_u64();
            let ok = version.is_some()
                && r["acked_version"].as_u64() == version
                && r["table"]["weights_version"].as_u64() >= Some(last_version);
            if ok {
                confirmed += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let d = |k: &str| m1.get(k) - m0.get(k);
    let plans = d("vantage_scheduler_plan_duration_seconds_count");
    let result = RoutesResult {
        agents: m,
        changes: args.changes,
        table_decode: args.table_decode,
        all_acked_ms,
        put_ms,
        per_agent_ms,
        confirmed,
        sampled: sample.len(),
        cpu: c0.split_until(&c1, workers),
        loadgen_cores: l0.cores_until(&l1),
        machine_cores: system_cores(sys0, sys1, c1.at.duration_since(c0.at).as_secs_f64()),
        mean_plan_ms: if plans > 0.0 {
            d("vantage_scheduler_plan_duration_seconds_sum") / plans * 1e3
        } else {
            0.0
        },
        stage_ms: stage_means(&m0, &m1),
        pushes: d("vantage_scheduler_route_pushes_total"),
        weight_sent: Sent::between(&m0, &m1),
        stream_acked_ms,
        stream_sent,
        stream_subscribers: watchers,
        subscribe_ms,
        subscribe_sent,
        acks: d("vantage_scheduler_route_acks_total"),
        nacks: d("vantage_scheduler_route_nacks_total"),
        subscribe_s,
    };
    fleet.shutdown().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, subs.join_next()).await {}
    subs.abort_all();
    drop(sched);
    client.close().await;
    Ok(result)
}

/// Mean duration of each planning stage between two `/metrics` samples, ms.
fn stage_means(m0: &Metrics, m1: &Metrics) -> Option<[f64; 3]> {
    let mean = |stage: &str| {
        let series = |what: &str| {
            let k = format!(
                "vantage_scheduler_plan_stage_duration_seconds_{what}{{stage=\"{stage}\"}}"
            );
            m1.get(&k) - m0.get(&k)
        };
        let n = series("count");
        (n > 0.0).then(|| series("sum") / n * 1e3)
    };
    Some([mean("views")?, mean("plan")?, mean("publish")?])
}
