//! The QoE score of one node serving another (an *edge* of the relay
//! graph): which measurement counts, the RTT model where none does, and the
//! small hashing helpers the planner uses for ids and load spreading.

use crate::node::{NodeView, PathStat};
use crate::settings::Limits;
use vantage_shared::place::modelled_rtt_ms;
use vantage_shared::score::{Input, Inputs, Ranges, Source};

/// The probe measurement of a pair the planner ranks on: the consumer's
/// own (`own`) when it has `min_samples`, else the other node's probes of
/// the consumer (`reverse`) when they have; `None` (RTT modelled from
/// distance) otherwise.
pub fn measured_path<P: std::borrow::Borrow<PathStat>>(
    own: Option<P>,
    reverse: impl FnOnce() -> Option<P>,
    min_samples: u32,
) -> Option<P> {
    let enough = |p: &P| p.borrow().samples >= min_samples;
    own.filter(enough).or_else(|| reverse().filter(enough))
}

/// Inputs of the QoE formula for `u` serving `n` at utilisation `util`.
pub fn edge_inputs(
    u: &NodeView,
    n: &NodeView,
    ranges: &Ranges,
    limits: &Limits,
    util: f64,
) -> Inputs {
    let measured = measured_path(
        n.paths.get(&u.id),
        || u.paths.get(&n.id),
        limits.min_path_samples,
    );
    let km = match (u.coord, n.coord) {
        (Some(a), Some(b)) => {
            Input::modelled(great_circle_km(&a.sphere_point(), &b.sphere_point()))
        }
        _ => Input::default_value((ranges.km.lo + ranges.km.hi) / 2.0),
    };
    let (rtt_ms, loss) = rtt_and_loss(measured, &km);
    Inputs {
        rtt_ms,
        loss,
        buffer_ms: buffer_input(u.buffer_ms, ranges),
        utilisation: Input::measured(util),
        km,
        throughput_ratio: relay_throughput(&rtt_ms, &loss, ranges, limits),
    }
}

/// The throughput input of a relay edge: what one TCP connection carries
/// over the path (Padhye, from its measured RTT and loss) against the bit
/// rate one stream needs (`limits.default_bitrate_kbps`: an upstream pull
/// carries each stream, each rendition, on its own connection). Without a
/// loss measurement: not known, no penalty.
pub fn relay_throughput(rtt_ms: &Input, loss: &Input, ranges: &Ranges, limits: &Limits) -> Input {
    if loss.source != Source::Measured {
        return Inputs::no_throughput(ranges);
    }
    let mbps = vantage_shared::tcp::padhye_mbps(rtt_ms.value, loss.value);
    Input::modelled(mbps / (limits.default_bitrate_kbps / 1000.0).max(1e-6))
}

/// A node's buffer input: measured, or the neutral default (the top of
/// the range: no penalty for a node that holds no streams yet).
pub fn buffer_input(buffer_ms: Option<f64>, ranges: &Ranges) -> Input {
    match buffer_ms {
        Some(b) => Input::measured(b),
        None => Input::default_value(ranges.buffer_ms.hi),
    }
}

/// RTT and loss inputs of an edge: measured when the path has enough
/// samples, else RTT modelled from the distance `km` (and loss 0 by
/// default).
pub fn rtt_and_loss(measured: Option<&PathStat>, km: &Input) -> (Input, Input) {
    match measured {
        Some(p) => (Input::measured(p.rtt_ms), Input::measured(p.loss)),
        None => (
            if km.source == Source::Modelled {
                Input::modelled(modelled_rtt_ms(km.value))
            } else {
                Input::default_value(modelled_rtt_ms(km.value))
            },
            Input::default_value(0.0),
        ),
    }
}

/// Great-circle distance between two points of
/// [`vantage_shared::place::Coord::sphere_point`] (km on a sphere of the Earth's mean radius):
/// `2R · asin(chord / 2R)`. The same distance as [`vantage_shared::place::Coord::km_to`]'s
/// haversine (to 1e-6 relative), with one `asin` and one `sqrt` instead of
/// two `sin`s more — the planner computes it for every root edge. Every
/// planner distance goes through this one function, so the same pair
/// always gets the same bits.
pub fn great_circle_km(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    const R: f64 = 6371.0;
    let (dx, dy, dz) = (a[0] - b[0], a[1] - b[1], a[2] - b[2]);
    let chord = (dx * dx + dy * dy + dz * dz).sqrt();
    2.0 * R * (chord / (2.0 * R)).min(1.0).asin()
}

pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes` from state `h` (the first half of
/// [`vantage_shared::score::rendezvous`]).
pub(crate) fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The splitmix64 finaliser of [`vantage_shared::score::rendezvous`].
pub(crate) fn finalise(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The hasher of the planner's id maps: FNV-1a with the splitmix
/// finaliser. Several times cheaper than SipHash for short ids, whose
/// resistance to chosen colliding keys is not needed for the ids of the
/// cluster's own enrolled nodes.
pub(crate) struct IdHasher(u64);

impl Default for IdHasher {
    fn default() -> Self {
        IdHasher(FNV_OFFSET)
    }
}

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv(self.0, bytes);
    }

    fn finish(&self) -> u64 {
        finalise(self.0)
    }
}

pub(crate) type IdMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;

/// `x` as an unsigned integer in the order of [`f32::total_cmp`].
pub(crate) fn total_order_bits32(x: f32) -> u32 {
    let bits = x.to_bits() as i32;
    (bits ^ ((((bits >> 31) as u32) >> 1) as i32)) as u32 ^ (1 << 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_shared::place::Coord;

    #[test]
    fn great_circle_km_agrees_with_the_haversine() {
        let pts = [
            (48.85, 2.35),
            (35.68, 139.65),
            (-33.9, 18.4),
            (40.7, -74.0),
            (0.0, 0.0),
            (0.0, 180.0),
        ];
        for &(la, lo) in &pts {
            for &(lb, lob) in &pts {
                let (a, b) = (Coord::new(la, lo).unwrap(), Coord::new(lb, lob).unwrap());
                let km = great_circle_km(&a.sphere_point(), &b.sphere_point());
                let want = a.km_to(&b);
                assert!((km - want).abs() <= 1e-5 * want.max(1.0), "{km} vs {want}");
            }
        }
    }

    #[test]
    fn total_order_bits32_sort_like_total_cmp() {
        let mut xs: Vec<f32> = vec![3.5, -1.0, 0.0, -0.0, f32::INFINITY, 1e-30, -7.25];
        let mut ys = xs.clone();
        xs.sort_by(f32::total_cmp);
        ys.sort_by_key(|&x| total_order_bits32(x));
        assert_eq!(xs, ys);
    }
}
