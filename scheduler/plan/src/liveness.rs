//! Liveness from report age (DESIGN §3): a node is `suspect` after 2
//! missed report intervals and `down` after 3 — unless the scheduler itself
//! is losing reports. Pure: the scheduler's liveness loop and the
//! simulator's view of telemetry call the same rule with the time reports
//! *arrived* (not when agents sent them).

use crate::node::Health;

/// What the rule needs to know of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// When the last report arrived (`None`: never).
    pub last_report_ms: Option<i64>,
    /// The state it is in now.
    pub state: Health,
    /// Whether its telemetry connection is open.
    pub connected: bool,
    /// An operator or the agent asked to drain it.
    pub draining: bool,
}

/// The state a node should be in at `now_ms` given the report interval.
///
/// Unless the scheduler itself is losing reports: a node that is not down
/// yet and still has its connection is held short of down (at suspect, or
/// draining) while `local_loss()` says the scheduler's socket dropped
/// datagrams lately, for at most `held_down_after_ms` (a dead agent's
/// connection ends at the QUIC idle timeout, and then nothing is held).
/// `local_loss` is asked only for such a node — the local health awareness
/// of Lifeguard (Dadgar et al. 2018).
pub fn evaluate(
    n: &Liveness,
    now_ms: i64,
    interval_ms: i64,
    held_down_after_ms: i64,
    local_loss: &mut dyn FnMut() -> bool,
) -> Health {
    let age = match n.last_report_ms {
        Some(t) => now_ms - t,
        None => return Health::Down,
    };
    if !n.connected && n.state == Health::Down {
        return Health::Down;
    }
    // Conditions of a hold, cheapest first: most ticks stop at the first.
    let held = age > 3 * interval_ms
        && n.state != Health::Down
        && n.connected
        && age <= held_down_after_ms
        && local_loss();
    if age > 3 * interval_ms && !held {
        Health::Down
    } else if n.draining {
        Health::Draining
    } else if age > 2 * interval_ms {
        Health::Suspect
    } else {
        Health::Up
    }
}

/// While the scheduler is dropping telemetry datagrams, a node that still
/// has its connection goes down only after this long without a report,
/// not 3 intervals: 10 report intervals, and at least the QUIC idle
/// timeout, by which a dead agent's connection has ended anyway.
pub fn held_down_after_ms(interval_ms: i64, idle_timeout_ms: i64) -> i64 {
    (10 * interval_ms).max(idle_timeout_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(last: Option<i64>, state: Health) -> Liveness {
        Liveness {
            last_report_ms: last,
            state,
            connected: true,
            draining: false,
        }
    }

    #[test]
    fn suspect_after_two_intervals_down_after_three() {
        let never = &mut || false;
        let n = node(Some(0), Health::Up);
        assert_eq!(evaluate(&n, 2_000, 1_000, 10_000, never), Health::Up);
        assert_eq!(evaluate(&n, 2_001, 1_000, 10_000, never), Health::Suspect);
        assert_eq!(evaluate(&n, 3_001, 1_000, 10_000, never), Health::Down);
        assert_eq!(
            evaluate(&node(None, Health::Up), 0, 1_000, 10_000, never),
            Health::Down
        );
        let draining = Liveness {
            draining: true,
            ..n
        };
        assert_eq!(
            evaluate(&draining, 500, 1_000, 10_000, never),
            Health::Draining
        );
    }

    #[test]
    fn local_loss_holds_a_connected_node_short_of_down_for_a_while() {
        let n = node(Some(0), Health::Suspect);
        let mut asked = 0;
        let mut lossy = || {
            asked += 1;
            true
        };
        assert_eq!(
            evaluate(&n, 3_500, 1_000, 10_000, &mut lossy),
            Health::Suspect
        );
        assert_eq!(
            evaluate(&n, 10_001, 1_000, 10_000, &mut lossy),
            Health::Down
        );
        assert_eq!(asked, 1, "asked only when a hold is possible");
        let gone = Liveness {
            connected: false,
            ..n
        };
        assert_eq!(
            evaluate(&gone, 3_500, 1_000, 10_000, &mut || true),
            Health::Down
        );
        assert_eq!(held_down_after_ms(250, 10_000), 10_000);
        assert_eq!(held_down_after_ms(2_000, 10_000), 20_000);
    }
}
