//! The QUIC client endpoints and the fleet of simulated agents: enrollment in
//! bulk, start, stop.

use super::*;

/// The client side: QUIC endpoints and TLS for gRPC.
pub(crate) struct Client {
    pub(crate) endpoints: Vec<quinn::Endpoint>,
    pub(crate) grpc_tls: ClientTlsConfig,
    pub(crate) token: String,
}

impl Client {
    pub(crate) fn new(s: &Scheduler, endpoints: usize) -> Result<Self> {
        let ca = s.ca();
        let roots = vantage_shared::tls::load_roots(&ca)?;
        let tls = vantage_shared::tls::client_config(roots, None, &[TELEMETRY_ALPN])?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| anyhow!("QUIC TLS: {e}"))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        // As the agent (agent/src/telemetry): 1 s keep-alive, 5 s idle
        // timeout, immediate ACKs requested.
        let mut acks = quinn::AckFrequencyConfig::default();
        acks.ack_eliciting_threshold(quinn::VarInt::from_u32(0));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(Duration::from_secs(1)))
            .max_idle_timeout(Some(quinn::VarInt::from_u32(5_000).into()))
            .ack_frequency_config(Some(acks));
        cfg.transport_config(Arc::new(transport));
        let mut eps = Vec::new();
        for _ in 0..endpoints.max(1) {
            // A large receive buffer, so the load generator itself does not
            // drop datagrams when its threads are briefly descheduled
            // (capped by net.core.rmem_max).
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").context("client UDP socket")?;
            let _ =
                rustix::net::sockopt::set_socket_recv_buffer_size(&socket, CLIENT_SOCKET_BUFFER);
            let _ =
                rustix::net::sockopt::set_socket_send_buffer_size(&socket, CLIENT_SOCKET_BUFFER);
            let mut ep = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket,
                Arc::new(quinn::TokioRuntime),
            )
            .context("client QUIC endpoint")?;
            ep.set_default_client_config(cfg.clone());
            eps.push(ep);
        }
        let ca_pem = std::fs::read(&ca)?;
        let grpc_tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca_pem))
            .domain_name("localhost");
        Ok(Self {
            endpoints: eps,
            grpc_tls,
            token: s.token()?,
        })
    }

    pub(crate) fn ports(&self) -> Vec<u16> {
        self.endpoints
            .iter()
            .filter_map(|e| e.local_addr().ok())
            .map(|a| a.port())
            .collect()
    }

    pub(crate) async fn close(&self) {
        for ep in &self.endpoints {
            ep.close(0u32.into(), b"bench done");
        }
        for ep in &self.endpoints {
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.wait_idle()).await;
        }
    }
}

/// An enrolled agent, as the coordinator sees it.
pub(crate) struct Enrolled {
    pub(crate) node_id: String,
    pub(crate) credential: String,
    pub(crate) shared: Arc<AgentShared>,
}

/// Agents connected and reporting.
pub(crate) struct Fleet {
    pub(crate) stop: CancellationToken,
    pub(crate) tasks: JoinSet<()>,
    /// By index; `None` for the (at most 1 %) agents that could not enroll.
    pub(crate) agents: Vec<Option<Enrolled>>,
    pub(crate) failures: Vec<String>,
    pub(crate) stats: Arc<LoadStats>,
    pub(crate) enroll_time: Duration,
}

impl Fleet {
    /// Enrolls `n` agents (at most `concurrency` enrollments at a time);
    /// each then reports until the fleet stops. More than 1 % failed
    /// enrollments is a setup failure.
    pub(crate) async fn enroll(
        client: &Client,
        server: SocketAddr,
        n: usize,
        concurrency: usize,
    ) -> Result<Self> {
        let started = Instant::now();
        let stop = CancellationToken::new();
        let stats = Arc::new(LoadStats::default());
        let sem = Arc::new(Semaphore::new(concurrency.max(1)));
        let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Result<Enrolled>)>();
        let mut tasks = JoinSet::new();
        for idx in 0..n {
            let endpoint = client.endpoints[idx % client.endpoints.len()].clone();
            let token = client.token.clone();
            let (sem, tx, stats, stop) = (sem.clone(), tx.clone(), stats.clone(), stop.clone());
            tasks.spawn(async move {
                let session = {
                    let Ok(_permit) = sem.acquire().await else {
                        return;
                    };
                    match tokio::time::timeout(
                        ENROLL_TIMEOUT,
                        enroll(&endpoint, server, idx, &token, &stats),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(anyhow!("enrollment timed out after {ENROLL_TIMEOUT:?}")),
                    }
                };
                match session {
                    Ok(s) => {
                        let shared = Arc::new(AgentShared::default());
                        shared.fleet_size.store(n as u64, Ordering::Relaxed);
                        shared.set_conn(s.conn.clone());
                        let _ = tx.send((
                            idx,
                            Ok(Enrolled {
                                node_id: s.node_id.clone(),
                                credential: s.credential.clone(),
                                shared: shared.clone(),
                            }),
                        ));
                        agent_life(endpoint, server, idx, n, s, shared, stats, sem, stop).await;
                    }
                    Err(e) => {
                        let _ = tx.send((idx, Err(e)));
                    }
                }
            });
        }
        drop(tx);
        let mut agents: Vec<Option<Enrolled>> = (0..n).map(|_| None).collect();
        let mut failures = Vec::new();
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(120)
            + Duration::from_millis(20 * n as u64);
        let mut answered = 0;
        while answered < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((idx, Ok(a)))) => agents[idx] = Some(a),
                Ok(Some((idx, Err(e)))) => failures.push(format!("{}: {e:#}", node_id(idx))),
                Ok(None) => break,
                Err(_) => {
                    failures.push("enrollment deadline passed".into());
                    break;
                }
            }
            answered += 1;
        }
        let fleet = Self {
            stop,
            tasks,
            agents,
            failures,
            stats,
            enroll_time: started.elapsed(),
        };
        let enrolled = fleet.enrolled();
        if enrolled * 100 < n * 99 || enrolled == 0 {
            let shown: Vec<String> = fleet.failures.iter().take(5).cloned().collect();
            let failed = fleet.failures.len();
            fleet.shutdown().await;
            bail!("only {enrolled} of {n} agents enrolled; {failed} failures, e.g. {shown:?}");
        }
        Ok(fleet)
    }

    /// Up to `ROUTE_SAMPLE` enrolled node ids spread over the fleet.
    pub(crate) fn sample_ids(&self) -> Vec<String> {
        let ids: Vec<&Enrolled> = self.agents.iter().flatten().collect();
        ids.iter()
            .step_by((ids.len() / ROUTE_SAMPLE).max(1))
            .take(ROUTE_SAMPLE)
            .map(|a| a.node_id.clone())
            .collect()
    }

    pub(crate) fn enrolled(&self) -> usize {
        self.agents.iter().flatten().count()
    }

    pub(crate) fn conns(&self) -> impl Iterator<Item = quinn::Connection> + '_ {
        self.agents.iter().flatten().filter_map(|a| a.shared.conn())
    }

    pub(crate) fn lost_packets(&self) -> u64 {
        self.conns().map(|c| c.stats().path.lost_packets).sum()
    }

    pub(crate) fn open_sessions(&self) -> usize {
        self.conns().filter(|c| c.close_reason().is_none()).count()
    }

    pub(crate) async fn shutdown(mut self) {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.tasks.join_next()).await {}
        self.tasks.abort_all();
    }
}

// ---------------------------------------------------------------------------
// Ingest phases
// ---------------------------------------------------------------------------
