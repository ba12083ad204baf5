//! The prober on virtual time, against simulated reflectors.

use super::*;
use std::collections::BTreeSet;

const OWN: &str = "edge-1";

fn spec(id: &str, port: u16) -> TargetSpec {
    TargetSpec {
        node_id: id.into(),
        addr: format!("127.0.0.1:{port}"),
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A simulated network: replies after `rtt` from targets that are alive.
struct Sim {
    prober: Prober,
    now: Instant,
    start: Instant,
    rtt: Duration,
    dead: BTreeSet<SocketAddr>,
    /// (delivery time, reply)
    in_flight: Vec<(Instant, Packet)>,
    sent: u64,
    events: Vec<(Duration, Event)>,
    unmatched: Vec<Unmatched>,
}

impl Sim {
    fn new(cfg: ProbeConfig, targets: &[TargetSpec]) -> Sim {
        let start = Instant::now();
        let mut prober = Prober::new(cfg, NodeTag::of(OWN), start);
        prober.set_targets(targets, start);
        Sim {
            prober,
            now: start,
            start,
            rtt: ms(30),
            dead: BTreeSet::new(),
            in_flight: Vec::new(),
            sent: 0,
            events: Vec::new(),
            unmatched: Vec::new(),
        }
    }

    fn tag_of(port: u16) -> NodeTag {
        NodeTag::of(&format!("peer-{port}"))
    }

    /// Runs until `until` (relative to start), event by event (bounded).
    fn run_until(&mut self, until: Duration) {
        let end = self.start + until;
        for _ in 0..1_000_000 {
            let next_reply = self.in_flight.iter().map(|(t, _)| *t).min();
            let next = [self.prober.next_wakeup(), next_reply]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|t| *t <= end) else {
                self.now = end;
                let (_, ev) = self.prober.expire(end);
                self.record(ev);
                return;
            };
            self.now = next.max(self.now);
            let now = self.now;
            let (ready, later): (Vec<_>, Vec<_>) =
                self.in_flight.drain(..).partition(|(t, _)| *t <= now);
            self.in_flight = later;
            for (_, reply) in ready {
                match self.prober.on_reply(&reply, now) {
                    Ok(Some(e)) => self.events.push((now - self.start, e)),
                    Ok(None) => {}
                    Err(u) => self.unmatched.push(u),
                }
            }
            let (_, ev) = self.prober.expire(now);
            self.record(ev);
            for (addr, req) in self.prober.due(now) {
                self.sent += 1;
                if !self.dead.contains(&addr) {
                    let t = now + self.rtt;
                    // Reflector clock 1 s ahead; 2 µs turnaround.
                    let t2 = req.t1_us + 1_015_000;
                    let reply = req.reply(Self::tag_of(addr.port()), t2, t2 + 2);
                    self.in_flight.push((t, reply));
                }
            }
        }
        panic!("simulation did not reach {until:?}");
    }

    fn record(&mut self, ev: Vec<Event>) {
        let at = self.now - self.start;
        self.events.extend(ev.into_iter().map(|e| (at, e)));
    }

    fn measurement(&self, id: &str) -> PathMeasurement {
        self.prober
            .measurements(self.now)
            .into_iter()
            .find(|m| m.target_node_id == id)
            .unwrap()
    }
}

fn peers(ports: &[u16]) -> Vec<TargetSpec> {
    ports
        .iter()
        .map(|p| spec(&format!("peer-{p}"), *p))
        .collect()
}

#[test]
fn measures_rtt_at_the_configured_rate() {
    let mut sim = Sim::new(ProbeConfig::default(), &peers(&[9001, 9002]));
    sim.run_until(Duration::from_secs(10));
    // 5/s to each of 2 targets for 10 s.
    assert!((95..=102).contains(&sim.sent), "{}", sim.sent);
    let m = sim.measurement("peer-9001");
    // RTT minus the reflector's 2 µs turnaround.
    assert!((m.rtt_p50_ms - 30.0).abs() < 0.01, "{m:?}");
    assert!((m.rtt_ewma_ms - 30.0).abs() < 0.01);
    assert_eq!(m.loss, 0.0);
    assert!(m.jitter_ms < 1e-6, "{m:?}");
    assert!(m.samples >= 48, "{m:?}");
    assert!(m.last_success_age_ms < 250);
    assert!(sim.events.is_empty());
    assert!(sim.unmatched.is_empty());
}

#[test]
fn silent_target_is_lost_once_then_recovers() {
    let mut sim = Sim::new(ProbeConfig::default(), &peers(&[9001, 9002]));
    sim.run_until(Duration::from_secs(5));
    let dead: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    sim.dead.insert(dead);
    sim.run_until(Duration::from_secs(8));
    let lost: Vec<_> = sim
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Lost { .. }))
        .collect();
    assert_eq!(lost.len(), 1, "one alert per episode: {:?}", sim.events);
    let (
        at,
        Event::Lost {
            node_id, silent, ..
        },
    ) = lost[0]
    else {
        unreachable!()
    };
    assert_eq!(node_id, "peer-9001");
    assert!(*silent > ms(1500));
    // Last reply at ~5.03 s; declared lost ~1.5 s later, well within 3 s.
    assert!(*at < Duration::from_millis(6700), "{at:?}");
    let m = sim.measurement("peer-9001");
    assert_eq!(m.loss, 1.0);
    assert!(m.last_success_age_ms > 2500);
    assert!(sim.prober.is_lost("peer-9001"));
    assert_eq!(sim.measurement("peer-9002").loss, 0.0);

    sim.dead.clear();
    sim.run_until(Duration::from_secs(9));
    assert!(
        sim.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Recovered { node_id, .. } if node_id == "peer-9001"))
    );
    let m = sim.measurement("peer-9001");
    assert!(
        m.loss > 0.0 && m.loss < 1.0,
        "window still holds the losses: {m:?}"
    );
}

#[test]
fn a_target_that_never_answered_reports_full_loss_without_alert() {
    let mut sim = Sim::new(ProbeConfig::default(), &peers(&[9001]));
    sim.dead.insert("127.0.0.1:9001".parse().unwrap());
    sim.run_until(Duration::from_secs(5));
    assert!(sim.events.is_empty());
    let m = sim.measurement("peer-9001");
    assert_eq!(m.loss, 1.0);
    assert_eq!(m.rtt_p50_ms, 1000.0, "lower bound: the timeout");
    assert!(m.samples >= 15);
}

#[test]
fn late_duplicate_and_foreign_replies_are_unmatched() {
    let cfg = ProbeConfig::default();
    let t0 = Instant::now();
    let mut p = Prober::new(cfg, NodeTag::of(OWN), t0);
    p.set_targets(&peers(&[9001]), t0);
    let sends = p.due(t0 + ms(300));
    assert_eq!(sends.len(), 1);
    let (_, req) = sends[0];
    let reply = req.reply(Sim::tag_of(9001), 1, 2);
    // Wrong reflector: left pending for the real one.
    let foreign = req.reply(NodeTag::of("impostor"), 1, 2);
    assert_eq!(
        p.on_reply(&foreign, t0 + ms(310)),
        Err(Unmatched::WrongPeer)
    );
    // Not ours.
    let mut other = reply;
    other.sender = NodeTag::of("edge-9");
    assert_eq!(p.on_reply(&other, t0 + ms(310)), Err(Unmatched::WrongPeer));
    assert_eq!(p.on_reply(&reply, t0 + ms(320)), Ok(None));
    assert_eq!(p.on_reply(&reply, t0 + ms(321)), Err(Unmatched::UnknownSeq));

    let sends = p.due(t0 + ms(600));
    let late = sends[0].1.reply(Sim::tag_of(9001), 1, 2);
    assert_eq!(p.on_reply(&late, t0 + ms(1700)), Err(Unmatched::Late));
    let (lost, _) = p.expire(t0 + ms(1700));
    assert_eq!(lost, 0, "the late reply already counted the loss");
    let m = &p.measurements(t0 + ms(1700))[0];
    assert_eq!(m.loss, 0.5);
}

#[test]
fn targets_follow_the_table_and_are_bounded() {
    let cfg = ProbeConfig {
        max_targets: 3,
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut p = Prober::new(cfg, NodeTag::of(OWN), t0);
    p.set_targets(&peers(&[1, 2, 3, 4, 5]), t0);
    assert_eq!(p.len(), 3);
    let sent = p.due(t0 + ms(250));
    assert_eq!(sent.len(), 3);
    // Remove two, add one: their requests in flight are forgotten.
    p.set_targets(&peers(&[3, 9]), t0 + ms(260));
    assert_eq!(p.len(), 2);
    assert_eq!(p.pending.len(), 1);
    // Names need resolution; literal addresses do not.
    p.set_targets(
        &[
            spec("peer-3", 3),
            TargetSpec {
                node_id: "named".into(),
                addr: "localhost:7402".into(),
            },
        ],
        t0 + ms(270),
    );
    let todo = p.to_resolve(t0 + ms(270));
    assert_eq!(todo.len(), 1);
    assert!(p.to_resolve(t0 + ms(280)).is_empty(), "retried only later");
    assert_eq!(p.to_resolve(t0 + ms(270) + RESOLVE_RETRY).len(), 1);
    assert!(p.due(t0 + ms(2000)).iter().all(|(a, _)| a.port() == 3));
    p.resolved(&todo[0], "127.0.0.1:7402".parse().unwrap());
    assert!(p.due(t0 + ms(3000)).iter().any(|(a, _)| a.port() == 7402));
    p.clear();
    assert!(p.is_empty());
    assert!(p.due(t0 + ms(5000)).is_empty());
    assert_eq!(p.next_wakeup(), None);
}

#[test]
fn total_rate_is_bounded_and_overhead_counted() {
    // 50 targets at the defaults: 5/s each = 250 requests/s.
    let ports: Vec<u16> = (1..=50).collect();
    let mut sim = Sim::new(ProbeConfig::default(), &peers(&ports));
    sim.run_until(Duration::from_secs(60));
    let per_s = sim.sent as f64 / 60.0;
    assert!((249.0..=251.0).contains(&per_s), "{per_s}");
    let bytes_per_s = per_s * vantage_shared::probe::PACKET_LEN as f64;
    assert!((bytes_per_s - 18_000.0).abs() < 100.0, "{bytes_per_s}");

    // The global budget slows everyone down: 50 targets, 100 pps in total.
    let cfg = ProbeConfig {
        max_pps: 100.0,
        ..Default::default()
    };
    let mut sim = Sim::new(cfg, &peers(&ports));
    sim.run_until(Duration::from_secs(20));
    let per_s = sim.sent as f64 / 20.0;
    assert!((95.0..=101.0).contains(&per_s), "{per_s}");
}

#[test]
fn sends_are_spread_not_bursty() {
    let ports: Vec<u16> = (1..=20).collect();
    let t0 = Instant::now();
    let mut p = Prober::new(ProbeConfig::default(), NodeTag::of(OWN), t0);
    p.set_targets(&peers(&ports), t0);
    // Within the first 50 ms only a fraction of the 20 targets is due.
    let early = p.due(t0 + ms(50)).len();
    assert!(early < 15, "{early}");
    // After a stall the prober does not catch up with a burst.
    let _ = p.due(t0 + ms(250));
    let after_stall = p.due(t0 + ms(5000)).len();
    assert_eq!(after_stall, 20);
    assert_eq!(p.due(t0 + ms(5001)).len(), 0);
}
