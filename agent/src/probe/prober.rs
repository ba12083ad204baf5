//! The prober's state machine, pure: which target to probe when, matching
//! replies to requests, timeouts, and lost-target episodes. The service
//! (`service.rs`) does the socket I/O and calls in with the current time.

use super::ProbeConfig;
use super::stats::{PathStats, Timestamps};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use vantage_proto::v1::PathMeasurement;
use vantage_shared::probe::{NodeTag, Packet};

/// Requests in flight are bounded whatever the configuration.
pub const MAX_PENDING: usize = 8_192;
/// How long a failed name lookup waits before the next attempt.
pub const RESOLVE_RETRY: Duration = Duration::from_secs(10);

/// A target as the route table names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub node_id: String,
    /// `HOST:PORT`
    pub addr: String,
}

/// Something the service must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A target that answered went silent: raise `PROBE_TARGET_LOST`.
    Lost {
        node_id: String,
        addr: String,
        silent: Duration,
    },
    /// A lost target answered again.
    Recovered { node_id: String, addr: String },
}

/// Why a reply was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// No request with that sequence number in flight (duplicate, forged
    /// replay, or for a removed target).
    UnknownSeq,
    /// Arrived after the timeout: the probe already counts as lost.
    Late,
    /// Not for us, or not from the node the request went to.
    WrongPeer,
}

#[derive(Debug)]
struct Target {
    addr: String,
    tag: NodeTag,
    resolved: Option<SocketAddr>,
    resolve_attempt: Option<Instant>,
    added: Instant,
    next_send: Instant,
    stats: PathStats,
    unanswered: u32,
    episode: bool,
}

#[derive(Debug, Clone)]
struct Pending {
    node_id: String,
    sent: Instant,
    t1_us: u64,
}

/// Probe state of one agent.
#[derive(Debug)]
pub struct Prober {
    cfg: ProbeConfig,
    own: NodeTag,
    epoch: Instant,
    targets: BTreeMap<String, Target>,
    pending: HashMap<u64, Pending>,
    /// Sequence numbers in send order, for timeouts (all share one timeout).
    order: VecDeque<u64>,
    next_seq: u64,
}

impl Prober {
    /// `epoch` is the zero of the µs timestamps on the wire.
    pub fn new(cfg: ProbeConfig, own: NodeTag, epoch: Instant) -> Self {
        Self {
            cfg,
            own,
            epoch,
            targets: BTreeMap::new(),
            pending: HashMap::new(),
            order: VecDeque::new(),
            next_seq: 1,
        }
    }

    pub fn config(&self) -> &ProbeConfig {
        &self.cfg
    }

    /// µs since the epoch (the wire clock).
    pub fn micros(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// Time between two requests to one target: the per-target rate, slowed
    /// down when the targets together would exceed the global budget.
    pub fn interval(&self) -> Duration {
        self.interval_for(self.targets.len())
    }

    fn interval_for(&self, targets: usize) -> Duration {
        let per = 1.0 / self.cfg.rate_hz.max(1e-3);
        let budget = targets.max(1) as f64 / self.cfg.max_pps.max(1e-3);
        Duration::try_from_secs_f64(per.max(budget).min(3600.0)).unwrap_or(Duration::from_secs(1))
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Follows the table: new targets start (spread over one interval),
    /// removed ones stop and forget their state, a changed address keeps
    /// the statistics but is resolved again. At most `max_targets` are
    /// kept (table order). Idempotent.
    pub fn set_targets(&mut self, specs: &[TargetSpec], now: Instant) {
        let specs: Vec<&TargetSpec> = specs.iter().take(self.cfg.max_targets).collect();
        let before = self.targets.len();
        self.targets
            .retain(|id, _| specs.iter().any(|s| &s.node_id == id));
        if self.targets.len() != before {
            let targets = &self.targets;
            self.pending.retain(|_, p| targets.contains_key(&p.node_id));
        }
        let interval = self.interval_for(specs.len());
        for s in specs {
            match self.targets.get_mut(&s.node_id) {
                Some(t) if t.addr == s.addr => {}
                Some(t) => {
                    t.addr = s.addr.clone();
                    t.resolved = s.addr.parse().ok();
                    t.resolve_attempt = None;
                }
                None => {
                    let tag = NodeTag::of(&s.node_id);
                    // Deterministic phase in [0, 1) from the node's tag.
                    let phase = f64::from(u16::from_be_bytes([tag.0[0], tag.0[1]])) / 65_536.0;
                    self.targets.insert(
                        s.node_id.clone(),
                        Target {
                            addr: s.addr.clone(),
                            tag,
                            resolved: s.addr.parse().ok(),
                            resolve_attempt: None,
                            added: now,
                            next_send: now + interval.mul_f64(phase),
                            stats: PathStats::new(self.cfg.stats.clone(), self.epoch),
                            unanswered: 0,
                            episode: false,
                        },
                    );
                }
            }
        }
    }

    /// Targets whose address is a name to look up now; each is marked as
    /// attempted, so it comes back only after [`RESOLVE_RETRY`].
    pub fn to_resolve(&mut self, now: Instant) -> Vec<TargetSpec> {
        let mut out = Vec::new();
        for (id, t) in &mut self.targets {
            let due = t
                .resolve_attempt
                .is_none_or(|at| now.saturating_duration_since(at) >= RESOLVE_RETRY);
            if t.resolved.is_none() && due {
                t.resolve_attempt = Some(now);
                out.push(TargetSpec {
                    node_id: id.clone(),
                    addr: t.addr.clone(),
                });
            }
        }
        out
    }

    /// Result of a name lookup; ignored if the target changed meanwhile.
    pub fn resolved(&mut self, spec: &TargetSpec, addr: SocketAddr) {
        if let Some(t) = self.targets.get_mut(&spec.node_id)
            && t.addr == spec.addr
        {
            t.resolved = Some(addr);
        }
    }

    /// Requests due at `now`: at most one per target per call. A target that
    /// fell behind (the task was busy) skips ahead instead of bursting.
    pub fn due(&mut self, now: Instant) -> Vec<(SocketAddr, Packet)> {
        let interval = self.interval();
        let t1_us = self.micros(now);
        let mut out = Vec::new();
        for (id, t) in &mut self.targets {
            let Some(addr) = t.resolved else { continue };
            if t.next_send > now || self.pending.len() >= MAX_PENDING {
                continue;
            }
            t.next_send += interval;
            if t.next_send <= now {
                t.next_send = now + interval;
            }
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1).max(1);
            self.pending.insert(
                seq,
                Pending {
                    node_id: id.clone(),
                    sent: now,
                    t1_us,
                },
            );
            self.order.push_back(seq);
            t.unanswered = t.unanswered.saturating_add(1);
            out.push((addr, Packet::request(seq, self.own, t1_us)));
        }
        out
    }

    /// An authenticated reply arrived at `now`.
    pub fn on_reply(&mut self, reply: &Packet, now: Instant) -> Result<Option<Event>, Unmatched> {
        if reply.sender != self.own {
            return Err(Unmatched::WrongPeer);
        }
        let t4_us = self.micros(now);
        let Some(p) = self.pending.get(&reply.seq) else {
            return Err(Unmatched::UnknownSeq);
        };
        let Some(t) = self.targets.get_mut(&p.node_id) else {
            self.pending.remove(&reply.seq);
            return Err(Unmatched::UnknownSeq);
        };
        if reply.reflector != t.tag {
            // Leave the request pending: the real target may still answer.
            return Err(Unmatched::WrongPeer);
        }
        let Some(p) = self.pending.remove(&reply.seq) else {
            return Err(Unmatched::UnknownSeq);
        };
        let elapsed = now.saturating_duration_since(p.sent);
        if elapsed > self.cfg.timeout {
            t.stats.on_loss(now);
            return Err(Unmatched::Late);
        }
        let raw_us = t4_us.saturating_sub(p.t1_us);
        // Subtract the reflector's turnaround when it is plausible.
        let turnaround = reply.t3_us.checked_sub(reply.t2_us).filter(|d| *d < raw_us);
        let rtt_us = raw_us - turnaround.unwrap_or(0);
        let to_ms = |us: u64| us as f64 / 1000.0;
        t.stats.on_reply(
            now,
            to_ms(rtt_us),
            Timestamps {
                t1: to_ms(p.t1_us),
                t2: to_ms(reply.t2_us),
                t3: to_ms(reply.t3_us),
                t4: to_ms(t4_us),
            },
        );
        t.unanswered = 0;
        if t.episode {
            t.episode = false;
            return Ok(Some(Event::Recovered {
                node_id: p.node_id,
                addr: t.addr.clone(),
            }));
        }
        Ok(None)
    }

    /// Times out requests and detects silent targets. Returns the number
    /// of probes that became lost and the events to act on.
    pub fn expire(&mut self, now: Instant) -> (u64, Vec<Event>) {
        let mut lost = 0;
        while let Some(seq) = self.order.front().copied() {
            let Some(p) = self.pending.get(&seq) else {
                self.order.pop_front();
                continue;
            };
            if now.saturating_duration_since(p.sent) < self.cfg.timeout {
                break;
            }
            self.order.pop_front();
            if let Some(p) = self.pending.remove(&seq)
                && let Some(t) = self.targets.get_mut(&p.node_id)
            {
                t.stats.on_loss(now);
                lost += 1;
            }
        }
        let mut events = Vec::new();
        for (id, t) in &mut self.targets {
            let Some(last) = t.stats.last_reply() else {
                continue;
            };
            let silent = now.saturating_duration_since(last);
            if !t.episode && silent > self.cfg.silence && t.unanswered >= self.cfg.min_unanswered {
                t.episode = true;
                events.push(Event::Lost {
                    node_id: id.clone(),
                    addr: t.addr.clone(),
                    silent,
                });
            }
        }
        (lost, events)
    }

    /// When [`Prober::due`] or [`Prober::expire`] next have work.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let sends = self
            .targets
            .values()
            .filter(|t| t.resolved.is_some())
            .map(|t| t.next_send);
        let timeout = self
            .order
            .front()
            .and_then(|s| self.pending.get(s))
            .map(|p| p.sent + self.cfg.timeout);
        let silence = self
            .targets
            .values()
            .filter(|t| !t.episode)
            .filter_map(|t| {
                t.stats
                    .last_reply()
                    .map(|l| l + self.cfg.silence + Duration::from_millis(1))
            });
        sends.chain(timeout).chain(silence).min()
    }

    /// Whether a target is in a lost episode.
    pub fn is_lost(&self, node_id: &str) -> bool {
        self.targets.get(node_id).is_some_and(|t| t.episode)
    }

    /// The report's view of every target with at least one outcome.
    pub fn measurements(&self, now: Instant) -> Vec<PathMeasurement> {
        let timeout_ms = self.cfg.timeout.as_secs_f64() * 1000.0;
        let mut out = Vec::with_capacity(self.targets.len());
        for (id, t) in &self.targets {
            let s = &t.stats;
            let (ok, lost) = s.outcomes(now);
            let samples = ok.saturating_add(lost);
            if samples == 0 && s.replies() == 0 {
                continue;
            }
            let loss = if t.episode {
                1.0
            } else {
                s.loss_ratio(now).unwrap_or(0.0)
            };
            // Never answered: the RTT is at least the timeout.
            let ewma = s.rtt_ewma().unwrap_or(timeout_ms);
            let since = s.last_reply().unwrap_or(t.added);
            let age = now.saturating_duration_since(since).as_millis();
            out.push(PathMeasurement {
                target_node_id: id.clone(),
                target_addr: t.addr.clone(),
                rtt_ewma_ms: ewma,
                rtt_p50_ms: s.rtt_quantile(0.5).unwrap_or(ewma),
                rtt_p95_ms: s.rtt_quantile(0.95).unwrap_or(ewma),
                loss,
                jitter_ms: s.jitter_ms(),
                samples,
                last_success_age_ms: u32::try_from(age).unwrap_or(u32::MAX),
            });
        }
        out
    }

    /// Stops everything (orphan rule): targets, requests in flight.
    pub fn clear(&mut self) {
        self.targets.clear();
        self.pending.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests;
