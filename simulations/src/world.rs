//! The world a scenario builds: nodes (PoPs and origins) at measured
//! cities, viewer cities, ground-truth RTT/jitter between every pair, stream
//! catalogue and popularity, traces. Immutable during a run; what changes
//! (load, failures, degradations) lives in the engine.
//!
//! Ground truth RTT between two places (docs/simulator.md):
//! each place is attached to its nearest measurement server; the RTT is the
//! measured server-pair average plus the fitted model's per-km slope for the
//! two detours (place → its server), or, where the pair was not measured
//! or both places share a server, the fitted distance model
//! `vantage_shared::place::modelled_rtt_ms` (same city: 1 ms + slope·km).

use crate::data::{self, City, Matrix, Trace};
use crate::error::SimError;
use crate::scenario::{Lifetime, Scenario};
use vantage_shared::place::{Coord, RTT_MODEL_MS_PER_KM, modelled_rtt_ms};

/// A PoP (edge) or an origin.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub coord: Coord,
    pub capacity_mbps: f64,
    pub origin: bool,
    /// Nearest measurement server and the detour to it, km.
    server: Option<(usize, f64)>,
}

/// A viewer city (a client group).
#[derive(Debug, Clone)]
pub struct ViewerCity {
    pub city: City,
    /// Index into the scenario's `viewers.regions` (0 when none given).
    pub region: usize,
    /// geohash-4 label, as agents report client groups.
    pub group: String,
    /// Median last-mile speeds of the city's country.
    pub access: crate::data::AccessSpeed,
    server: Option<(usize, f64)>,
}

#[derive(Debug)]
pub struct World {
    pub nodes: Vec<Node>,
    /// Indices of PoPs (nodes that serve viewers).
    pub pops: Vec<u16>,
    pub cities: Vec<ViewerCity>,
    pub regions: Vec<String>,
    /// Ground truth node↔node RTT (ms) and jitter (ms), `n × n`.
    pub node_rtt: Vec<f32>,
    pub node_jitter: Vec<f32>,
    pub node_km: Vec<f32>,
    /// Ground truth city→node RTT without access (ms), `cities × n`.
    pub city_rtt: Vec<f32>,
    pub city_km: Vec<f32>,
    pub traces: Vec<Trace>,
    /// What building the world noticed and fixed (resampled traces).
    pub notes: Vec<String>,
    /// Origin node of each stream.
    pub stream_origin: Vec<u16>,
    /// Cumulative Zipf popularity of streams.
    pub stream_cdf: Vec<f64>,
    /// Real live-stream durations, seconds (None: streams live forever).
    pub lifetimes: LifetimeModel,
    /// Bit rate of the top rendition, Mbps (what origins publish).
    pub bitrate_mbps: f64,
    /// The ABR ladder, Mbps, ascending (the last is `bitrate_mbps`).
    pub ladder_mbps: Vec<f64>,
    pub gop_ms: f64,
}

#[derive(Debug, Clone)]
pub enum LifetimeModel {
    Forever,
    Fixed(f64),
    Empirical(Vec<f64>),
}

/// Whether `city` belongs to `region` (a timezone prefix like `Europe`, or
/// an ISO country code like `DE`).
pub fn in_region(city: &City, region: &str) -> bool {
    if region == "World" {
        return true;
    }
    if region.len() == 2 && region.chars().all(|c| c.is_ascii_uppercase()) {
        return city.country == region;
    }
    city.timezone
        .split('/')
        .next()
        .is_some_and(|p| p.eq_ignore_ascii_case(region))
}

impl World {
    pub fn build(s: &Scenario) -> Result<Self, SimError> {
        let matrix = data::load_matrix(
            &s.data_file(&s.data.servers, "servers.csv"),
            &s.data_file(&s.data.pings, "pings.csv"),
        )
        .map_err(in_field("data.servers / data.pings"))?;
        let speeds =
            data::load_access_speeds(&s.data_file(&s.data.access_speeds, "access-speeds.csv"))
                .map_err(in_field("data.access_speeds"))?;
        if matrix.is_empty() {
            return Err(SimError::World("the latency matrix has no servers".into()));
        }
        let mut nodes = Vec::new();
        for (origin, list) in [(false, &s.pops), (true, &s.origins)] {
            for sp in list {
                let p = sp.get_ref();
                let coord = match (&p.city, p.lat, p.lon) {
                    (Some(city), _, _) => {
                        let i = matrix.by_city(city).ok_or_else(|| {
                            SimError::Scenario {
                                file: s.file.clone(),
                                line: Some(crate::scenario::line_of(&s.source, sp.span().start)),
                                field: format!("{}.city", if origin { "origins" } else { "pops" }),
                                message: format!(
                                    "`{city}` is not a city of the latency matrix (servers.csv name or title)"
                                ),
                            }
                        })?;
                        matrix.servers[i].coord
                    }
                    (None, Some(lat), Some(lon)) => Coord::new(lat, lon)
                        .ok_or_else(|| SimError::World(format!("{}: bad coordinates", p.id)))?,
                    _ => return Err(SimError::World(format!("{}: no place", p.id))),
                };
                nodes.push(Node {
                    id: p.id.clone(),
                    coord,
                    capacity_mbps: p.capacity_mbps,
                    origin,
                    server: matrix.nearest(&coord),
                });
            }
        }
        let n = nodes.len();
        let pops = (0..n)
            .filter(|&i| !nodes[i].origin)
            .map(|i| i as u16)
            .collect();
        let mut node_rtt = vec![0f32; n * n];
        let mut node_jitter = vec![0f32; n * n];
        let mut node_km = vec![0f32; n * n];
        for a in 0..n {
            for b in 0..n {
                let km = nodes[a].coord.km_to(&nodes[b].coord);
                let (rtt, jit) = if a == b {
                    (0.5, 0.1)
                } else {
                    truth_rtt(&matrix, nodes[a].server, nodes[b].server, km)
                };
                node_rtt[a * n + b] = rtt as f32;
                node_jitter[a * n + b] = jit as f32;
                node_km[a * n + b] = km as f32;
            }
        }
        let v = s.viewers();
        let regions: Vec<String> = if v.regions.is_empty() {
            vec!["World".into()]
        } else {
            v.regions.clone()
        };
        let all = data::load_cities(&s.data_file(&s.data.cities, "cities.csv"), v.min_population)
            .map_err(in_field("data.cities"))?;
        let vline = Some(s.viewers.span().start);
        let countries: std::collections::BTreeSet<&str> =
            all.iter().map(|c| c.country.as_str()).collect();
        let known = |r: &str| {
            r.len() != 2 || !r.chars().all(|c| c.is_ascii_uppercase()) || countries.contains(r)
        };
        for (i, r) in v.regions.iter().enumerate() {
            if !known(r) {
                return Err(s.err(
                    vline,
                    &format!("viewers.regions[{i}]"),
                    format!(
                        "`{r}`: no city of that country code (≥ min_population) in the cities data"
                    ),
                ));
            }
        }
        for (i, sp) in s.events.iter().enumerate() {
            if let crate::scenario::EventSpec::FlashCrowd {
                region: Some(r), ..
            } = sp.get_ref()
                && !known(r)
            {
                return Err(s.err(
                    Some(sp.span().start),
                    &format!("events[{i}].region"),
                    format!("`{r}`: no city of that country code in the cities data"),
                ));
            }
        }
        let mut cities = Vec::new();
        for c in all {
            let region = if v.regions.is_empty() {
                Some(0)
            } else {
                v.regions.iter().position(|r| in_region(&c, r))
            };
            if let Some(region) = region {
                let group = vantage_shared::group::geohash(c.coord.lat, c.coord.lon, 4)
                    .unwrap_or_else(|| "unknown".into());
                let server = matrix.nearest(&c.coord);
                let access = speeds.of(&c.country);
                cities.push(ViewerCity {
                    city: c,
                    region,
                    group,
                    access,
                    server,
                });
            }
        }
        if cities.is_empty() {
            return Err(SimError::World(
                "viewers: no city matches `regions` and `min_population`".into(),
            ));
        }
        for (i, r) in regions.iter().enumerate() {
            if !cities.iter().any(|c| c.region == i) && !v.regions.is_empty() {
                return Err(s.err(
                    vline,
                    &format!("viewers.regions[{i}]"),
                    format!("`{r}`: no city of this region has ≥ min_population inhabitants (or an earlier region took them all)"),
                ));
            }
        }
        let mut city_rtt = Vec::with_capacity(cities.len() * n);
        let mut city_km = Vec::with_capacity(cities.len() * n);
        for c in &cities {
            for node in &nodes {
                let km = c.city.coord.km_to(&node.coord);
                city_rtt.push(truth_rtt(&matrix, c.server, node.server, km).0 as f32);
                city_km.push(km as f32);
            }
        }
        // RTT overrides (both directions).
        for (i, sp) in s.network.rtt.iter().enumerate() {
            let o = sp.get_ref();
            let jitter = o.jitter_ms.unwrap_or(0.05 * o.rtt_ms) as f32;
            let Some(a) = nodes.iter().position(|x| x.id == o.from) else {
                continue; // validated already
            };
            if let Some(b) = nodes.iter().position(|x| x.id == o.to) {
                for (x, y) in [(a, b), (b, a)] {
                    node_rtt[x * n + y] = o.rtt_ms as f32;
                    node_jitter[x * n + y] = jitter;
                }
                continue;
            }
            let mut hit = false;
            for (ci, c) in cities.iter().enumerate() {
                let is = regions.get(c.region).is_some_and(|r| r == &o.to)
                    || in_region(&c.city, &o.to)
                    || c.city.name.eq_ignore_ascii_case(&o.to);
                if is {
                    city_rtt[ci * n + a] = o.rtt_ms as f32;
                    hit = true;
                }
            }
            if !hit {
                return Err(s.err(
                    Some(sp.span().start),
                    &format!("network.rtt[{i}].to"),
                    format!(
                        "`{}` is neither a node id nor a region, country code or city of the viewers",
                        o.to
                    ),
                ));
            }
        }
        let st = s.streams();
        let origin_ids: Vec<u16> = if st.origins.is_empty() {
            (0..n)
                .filter(|&i| nodes[i].origin)
                .map(|i| i as u16)
                .collect()
        } else {
            st.origins
                .iter()
                .filter_map(|o| nodes.iter().position(|x| &x.id == o).map(|i| i as u16))
                .collect()
        };
        if origin_ids.is_empty() {
            return Err(SimError::World("streams: no origin".into()));
        }
        let stream_origin = (0..st.count as usize)
            .map(|i| origin_ids[i % origin_ids.len()])
            .collect();
        let mut stream_cdf = Vec::with_capacity(st.count as usize);
        let mut acc = 0.0;
        for k in 1..=st.count {
            acc += 1.0 / f64::from(k).powf(st.zipf_s);
            stream_cdf.push(acc);
        }
        for x in &mut stream_cdf {
            *x /= acc;
        }
        let lifetimes = match &st.lifetime {
            Lifetime::Seconds(x) => LifetimeModel::Fixed(*x),
            Lifetime::Named(n) if n == "ytlive" => LifetimeModel::Empirical(
                data::load_durations(
                    &s.data_file(&s.data.stream_durations, "ytlive-durations.csv"),
                )
                .map_err(in_field("data.stream_durations"))?,
            ),
            Lifetime::Named(_) => LifetimeModel::Forever,
        };
        let mut notes = Vec::new();
        let pattern = match &v.traces {
            Some(p) => s.resolve(p),
            None => crate::scenario::bundled_data_dir().join("traces/*"),
        };
        let traces = data::load_traces(&pattern, &mut notes).map_err(in_field("viewers.traces"))?;
        let ladder_mbps: Vec<f64> = st.ladder().iter().map(|k| k / 1000.0).collect();
        Ok(World {
            nodes,
            pops,
            cities,
            regions,
            node_rtt,
            node_jitter,
            node_km,
            city_rtt,
            city_km,
            traces,
            notes,
            stream_origin,
            stream_cdf,
            lifetimes,
            bitrate_mbps: ladder_mbps
                .last()
                .copied()
                .unwrap_or(st.bitrate_kbps / 1000.0),
            ladder_mbps,
            gop_ms: st.gop_ms,
        })
    }

    pub fn n(&self) -> usize {
        self.nodes.len()
    }

    pub fn rtt(&self, a: usize, b: usize) -> f64 {
        f64::from(self.node_rtt[a * self.nodes.len() + b])
    }

    pub fn jitter(&self, a: usize, b: usize) -> f64 {
        f64::from(self.node_jitter[a * self.nodes.len() + b])
    }

    pub fn km(&self, a: usize, b: usize) -> f64 {
        f64::from(self.node_km[a * self.nodes.len() + b])
    }

    pub fn city_rtt(&self, city: usize, node: usize) -> f64 {
        f64::from(self.city_rtt[city * self.nodes.len() + node])
    }

    pub fn city_km(&self, city: usize, node: usize) -> f64 {
        f64::from(self.city_km[city * self.nodes.len() + node])
    }
}

/// Prefixes a data error with the scenario field that named the file.
fn in_field(field: &'static str) -> impl Fn(SimError) -> SimError {
    move |e| match e {
        SimError::World(m) if m.starts_with(field) => SimError::World(m),
        other => SimError::World(format!("{field}: {other}")),
    }
}

/// Ground-truth RTT and jitter between two places `km` apart attached to
/// measurement servers `a` and `b`.
fn truth_rtt(m: &Matrix, a: Option<(usize, f64)>, b: Option<(usize, f64)>, km: f64) -> (f64, f64) {
    if let (Some((sa, da)), Some((sb, db))) = (a, b) {
        if sa == sb {
            return (1.0 + RTT_MODEL_MS_PER_KM * km, 0.5);
        }
        if let Some((avg, mdev)) = m.get(sa, sb) {
            return (avg + RTT_MODEL_MS_PER_KM * (da + db), mdev);
        }
    }
    // Unmeasured pair: the fitted distance model; jitter 5 % of it.
    let rtt = modelled_rtt_ms(km);
    (rtt, 0.05 * rtt)
}
