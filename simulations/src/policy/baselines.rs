//! Baseline viewer-routing policies. They see only the
//! [`View`](crate::telemetry::View): reported utilisation (stale by the report
//! interval plus delay, noisy), liveness from report age, per-group RTT
//! where viewers were sent.

use super::Ask;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use vantage_shared::place::modelled_rtt_ms;

/// Minimum samples for a group RTT to count as measured (as the
/// scheduler's `min_path_samples`).
pub const MIN_GROUP_SAMPLES: u32 = 5;

pub fn random(ask: &Ask<'_>, rng: &mut ChaCha8Rng) -> Option<usize> {
    let c: Vec<usize> = ask.candidates().collect();
    if c.is_empty() {
        return None;
    }
    Some(c[rng.random_range(0..c.len())])
}

pub fn round_robin(ask: &Ask<'_>, next: &mut usize) -> Option<usize> {
    let c: Vec<usize> = ask.candidates().collect();
    if c.is_empty() {
        return None;
    }
    let pick = c[*next % c.len()];
    *next = next.wrapping_add(1);
    Some(pick)
}

/// The nearest live PoP by great-circle distance.
pub fn geo_nearest(ask: &Ask<'_>) -> Option<usize> {
    let city = ask.city as usize;
    ask.candidates().min_by(|&a, &b| {
        ask.world
            .city_km(city, a)
            .total_cmp(&ask.world.city_km(city, b))
            .then(a.cmp(&b))
    })
}

/// The PoP with the lowest *reported* utilisation. No accounting for
/// viewers sent since the report: the textbook herding failure.
pub fn least_loaded(ask: &Ask<'_>) -> Option<usize> {
    ask.candidates().min_by(|&a, &b| {
        ask.view.utilisation[a]
            .total_cmp(&ask.view.utilisation[b])
            .then(a.cmp(&b))
    })
}

/// Lowest RTT: measured for the viewer's group where viewers of the group
/// were served there, modelled from distance elsewhere.
pub fn lowest_rtt(ask: &Ask<'_>) -> Option<usize> {
    let city = ask.city as usize;
    let rtt = |p: usize| match ask
        .view
        .group(p as u16, ask.city, ask.now_ms, MIN_GROUP_SAMPLES)
    {
        Some(g) => g.rtt_ms,
        None => modelled_rtt_ms(ask.world.city_km(city, p)),
    };
    ask.candidates()
        .min_by(|&a, &b| rtt(a).total_cmp(&rtt(b)).then(a.cmp(&b)))
}

/// Two PoPs at random, the less loaded (reported) of the two.
pub fn power_of_two(ask: &Ask<'_>, rng: &mut ChaCha8Rng) -> Option<usize> {
    let c: Vec<usize> = ask.candidates().collect();
    if c.is_empty() {
        return None;
    }
    let a = c[rng.random_range(0..c.len())];
    let b = c[rng.random_range(0..c.len())];
    Some(if ask.view.utilisation[b] < ask.view.utilisation[a] {
        b
    } else {
        a
    })
}
