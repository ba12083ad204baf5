//! Discrete events: report deliveries, the liveness loop and the
//! scenario's events (link degradation, telemetry loss and delay, PoPs down
//! and up).

use super::*;

impl Engine<'_> {
    pub(super) fn handle(&mut self, t: u64, ev: Ev) {
        match ev {
            Ev::Deliver(r) => self.view.apply(*r, t),
            Ev::Liveness => self.liveness_tick(t),
            Ev::Scenario(i) => self.scenario_event(i, t, true),
            Ev::ScenarioEnd(i) => self.scenario_event(i, t, false),
        }
    }

    fn node_index(&self, id: &str) -> Option<usize> {
        self.w.nodes.iter().position(|n| n.id == id)
    }

    fn scenario_event(&mut self, i: usize, t: u64, start: bool) {
        let ev = self.s.events[i].get_ref().clone();
        let label = format!("{}{}", ev.kind(), if start { "" } else { " end" });
        self.metrics.event(t, label, describe(&ev));
        if start && ev.ramp_s() > 0.0 {
            self.ramping.push(i);
        }
        match ev {
            EventSpec::PopDown { pop, ramp_s, .. } => {
                if let Some(p) = self.node_index(&pop)
                    && ramp_s <= 0.0
                {
                    self.pop_down(p, t);
                }
            }
            EventSpec::PopUp { pop, ramp_s, .. } => {
                if let Some(p) = self.node_index(&pop) {
                    self.up[p] = true;
                    self.capacity[p] = if ramp_s > 0.0 {
                        0.0
                    } else {
                        self.w.nodes[p].capacity_mbps
                    };
                }
            }
            EventSpec::LinkDegrade {
                from,
                to,
                extra_rtt_ms,
                loss,
                ..
            } => {
                if start {
                    let from = self.node_index(&from).map_or(NONE, |x| x as u16);
                    let to = to
                        .as_deref()
                        .and_then(|x| self.node_index(x))
                        .map_or(NONE, |x| x as u16);
                    self.degrades.push((
                        i,
                        Degrade {
                            from,
                            to,
                            rtt: extra_rtt_ms,
                            loss,
                        },
                    ));
                } else {
                    self.degrades.retain(|(j, _)| *j != i);
                    self.ramping.retain(|j| *j != i);
                }
                self.rebuild_degrades();
            }
            EventSpec::FlashCrowd { .. } => {}
            EventSpec::TelemetryLoss { pop, .. } => {
                if start {
                    let p = pop
                        .as_deref()
                        .and_then(|x| self.node_index(x))
                        .map(|x| x as u16);
                    self.telemetry_loss.push((i, p));
                } else {
                    self.telemetry_loss.retain(|(j, _)| *j != i);
                }
            }
            EventSpec::TelemetryDelay { extra_ms, .. } => {
                if start {
                    self.telemetry_delay.push((i, extra_ms));
                } else {
                    self.telemetry_delay.retain(|(j, _)| *j != i);
                }
            }
        }
    }

    /// Re-evaluates the events whose ramp is in progress (every tick).
    pub(super) fn apply_ramps(&mut self) {
        let t_s = self.now as f64 / 1000.0;
        let mut degrades = false;
        let mut done = Vec::new();
        for &i in &self.ramping.clone() {
            let ev = self.s.events[i].get_ref();
            let k = ev.strength(t_s);
            match ev {
                EventSpec::PopDown { pop, .. } => {
                    if let Some(p) = self.node_index(pop) {
                        if k >= 1.0 {
                            if self.up[p] {
                                self.pop_down(p, self.now);
                            }
                        } else {
                            self.capacity[p] = self.w.nodes[p].capacity_mbps * (1.0 - k);
                        }
                    }
                }
                EventSpec::PopUp { pop, .. } => {
                    if let Some(p) = self.node_index(pop) {
                        self.capacity[p] = self.w.nodes[p].capacity_mbps * k;
                    }
                }
                EventSpec::LinkDegrade { .. } => degrades = true,
                _ => {}
            }
            if k >= 1.0 {
                done.push(i);
            }
        }
        self.ramping.retain(|i| !done.contains(i));
        if degrades || !done.is_empty() {
            self.rebuild_degrades();
        }
    }

    fn rebuild_degrades(&mut self) {
        self.access = vec![(0.0, 0.0); self.n];
        self.pair.clear();
        let t_s = self.now as f64 / 1000.0;
        for (i, d) in &self.degrades {
            if d.from == NONE {
                continue;
            }
            let k = self.s.events[*i].get_ref().strength(t_s);
            let d = Degrade {
                rtt: d.rtt * k,
                loss: d.loss * k,
                ..*d
            };
            if d.to == NONE {
                let a = &mut self.access[usize::from(d.from)];
                a.0 += d.rtt;
                a.1 += d.loss;
            } else {
                let key = (d.from.min(d.to), d.from.max(d.to));
                let e = self.pair.entry(key).or_insert((0.0, 0.0));
                e.0 += d.rtt;
                e.1 += d.loss;
            }
        }
    }

    /// A node dies: its viewers' players play out their buffer and
    /// reconnect after the timeout; feeds pulling from it fail over at the
    /// next tick.
    fn pop_down(&mut self, p: usize, t: u64) {
        self.up[p] = false;
        self.capacity[p] = self.w.nodes[p].capacity_mbps;
        let timeout = self.s.player.reconnect_timeout_ms as u64;
        let mut sessions = std::mem::take(&mut self.sessions);
        for s in &mut sessions {
            if usize::from(s.node) == p && !matches!(s.phase, Phase::Waiting { .. }) {
                self.detach(s);
                if s.joined {
                    s.stalls += 1;
                    s.player.interrupt();
                }
                s.failed = p as u16;
                s.phase = Phase::Waiting {
                    until_ms: t + timeout,
                };
            }
        }
        self.sessions = sessions;
    }
}

fn describe(ev: &EventSpec) -> String {
    match ev {
        EventSpec::PopDown { pop, .. } => format!("{pop} down"),
        EventSpec::PopUp { pop, .. } => format!("{pop} up"),
        EventSpec::LinkDegrade {
            from,
            to,
            extra_rtt_ms,
            loss,
            ..
        } => format!(
            "{from}↔{} +{extra_rtt_ms} ms, {:.1} % loss",
            to.as_deref().unwrap_or("viewers"),
            loss * 100.0
        ),
        EventSpec::FlashCrowd {
            multiplier, region, ..
        } => format!(
            "flash crowd ×{multiplier} {}",
            region.as_deref().unwrap_or("everywhere")
        ),
        EventSpec::TelemetryLoss { pop, .. } => {
            format!(
                "reports lost from {}",
                pop.as_deref().unwrap_or("all nodes")
            )
        }
        EventSpec::TelemetryDelay { extra_ms, .. } => format!("reports +{extra_ms} ms"),
    }
}
