use super::learn::{GroupEstimate, Learner};
use super::rank::{
    Candidate, Decision, Ineligible, LoadLedger, RankInput, RankParams, Viewer, eligibility, rank,
};
use super::*;
use crate::registry::{NodeEntry, NodeInfo, Session};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::collections::BTreeMap;
use vantage_proto::v1::{Load, Report, StreamState};
use vantage_shared::score::Source;

const PARIS: (f64, f64) = (48.8566, 2.3522);
const FRANKFURT: (f64, f64) = (50.1109, 8.6821);
const TOKYO: (f64, f64) = (35.6762, 139.6503);
const SAO_PAULO: (f64, f64) = (-23.5505, -46.6333);
const LYON: (f64, f64) = (45.764, 4.8357);
const OSAKA: (f64, f64) = (34.6937, 135.5023);
const RIO: (f64, f64) = (-22.9068, -43.1729);

fn coord(c: (f64, f64)) -> Option<Coord> {
    Coord::new(c.0, c.1)
}

fn cand<'a>(id: &'a str, at: (f64, f64)) -> Candidate<'a> {
    Candidate {
        id,
        public_url: "http://127.0.0.1:1",
        health: Health::Up,
        coord: coord(at),
        capacity_mbps: 1000.0,
        egress_mbps: 0.0,
        assigned_mbps: 0.0,
        charge_mbps: 0.0,
        group: None,
        node_wide: None,
        stream_buffer_ms: None,
    }
}

fn world() -> Vec<Candidate<'static>> {
    vec![
        cand("fra", FRANKFURT),
        cand("par", PARIS),
        cand("sao", SAO_PAULO),
        cand("tyo", TOKYO),
    ]
}

/// Rank input of the tests: `viewer` asking for `n` edges at `now_ms`.
fn rank_input<'a>(
    w: &'a Weights,
    r: &'a Ranges,
    p: &'a RankParams,
    now_ms: i64,
    viewer: Viewer,
    n: usize,
) -> RankInput<'a> {
    RankInput {
        now_ms,
        weights: w,
        ranges: r,
        params: p,
        viewer,
        n,
    }
}

/// A 2.5 Mbit/s viewer at `place`.
fn viewer(place: (f64, f64)) -> Viewer {
    Viewer {
        coord: coord(place),
        bitrate_mbps: 2.5,
    }
}

fn no_explore() -> RankParams {
    RankParams {
        exploration_share: 0.0,
        ..RankParams::default()
    }
}

fn first<'a>(cands: &'a [Candidate<'_>], at: (f64, f64), params: &RankParams, now: i64) -> &'a str {
    let (w, r) = (Weights::default(), Ranges::default());
    let input = rank_input(&w, &r, params, now, viewer(at), 4);
    let out = rank(&input, cands, &mut StdRng::seed_from_u64(1));
    cands[out.edges[0].index].id
}

#[test]
fn resolve_nearby_edge_first_and_modelled_without_viewer_data() {
    let cands = world();
    let p = no_explore();
    assert_eq!(first(&cands, LYON, &p, 0), "par");
    assert_eq!(first(&cands, OSAKA, &p, 0), "tyo");
    assert_eq!(first(&cands, RIO, &p, 0), "sao");
    let (w, r) = (Weights::default(), Ranges::default());
    let input = rank_input(&w, &r, &p, 0, viewer(LYON), 4);
    let out = rank(&input, &cands, &mut StdRng::seed_from_u64(1));
    assert_eq!(out.edges.len(), 4);
    assert_eq!(out.decision, Decision::Best);
    let b = &out.edges[0].breakdown;
    assert_eq!(b.term("latency").unwrap().source, Source::Modelled);
    assert_eq!(b.term("distance").unwrap().source, Source::Modelled);
    assert_eq!(b.term("buffer").unwrap().source, Source::Default);
    let sum: f64 = b.terms.iter().map(|t| t.contribution).sum();
    assert!((sum - out.edges[0].score).abs() < 1e-12);
    assert!(out.edges.windows(2).all(|w| w[0].score <= w[1].score));
}

fn stalls(group: &str, samples: u32) -> GroupQoe {
    GroupQoe {
        group: group.into(),
        viewers: 2,
        tcp_rtt_ms: 12.0,
        retransmit_rate: 0.0,
        stall_rate: 0.9,
        buffer_ms: 150.0,
        samples,
        delivery_rate_mbps: 0.0,
    }
}

#[test]
fn resolve_group_stalls_move_only_that_group() {
    let lyon = GroupKey::locate(Some(LYON), 4).to_string();
    let mut l = Learner::new(120_000, 100);
    let p = no_explore();
    // Too few samples: still modelled, still Paris.
    l.observe("par", &[stalls(&lyon, 2)], 1_000);
    fn with<'a>(l: &'a Learner, lyon: &str) -> Vec<Candidate<'a>> {
        let mut c = world();
        for x in &mut c {
            x.group = l.get(lyon, x.id);
        }
        c
    }
    assert_eq!(first(&with(&l, &lyon), LYON, &p, 1_000), "par");
    l.observe("par", &[stalls(&lyon, 6)], 2_000);
    let c = with(&l, &lyon);
    assert_eq!(first(&c, LYON, &p, 2_000), "fra");
    // Osaka has no estimates: unchanged.
    assert_eq!(first(&world(), OSAKA, &p, 2_000), "tyo");
    // The estimate decays back below the threshold after a few half-lives.
    assert_eq!(first(&c, LYON, &p, 2_000 + 5 * 120_000), "par");
}

#[test]
fn resolve_measured_inputs_say_so() {
    let mut e = GroupEstimate::default();
    e.observe(&stalls("u05k", 10), 0, 60_000);
    let o = e.at(60_000, 60_000);
    assert!(
        (o.samples - 5.0).abs() < 1e-9,
        "half-life halves the weight"
    );
    assert_eq!(o.rtt_ms, Some(12.0));
    let mut c = cand("par", PARIS);
    c.group = Some(&e);
    let (w, r, p) = (Weights::default(), Ranges::default(), no_explore());
    let input = rank_input(
        &w,
        &r,
        &p,
        0,
        Viewer {
            coord: coord(LYON),
            bitrate_mbps: 1.0,
        },
        1,
    );
    let i = rank::inputs(&c, &input);
    assert_eq!(i.rtt_ms.source, Source::Measured);
    assert_eq!(i.rtt_ms.value, 12.0);
    assert_eq!(i.buffer_ms.source, Source::Measured);
    assert!(
        (i.buffer_ms.value - 15.0).abs() < 1e-9,
        "150 ms × (1 − 0.9)"
    );
    assert_eq!(i.loss.source, Source::Measured);
}

#[test]
fn resolve_never_ineligible_nodes() {
    let r = Ranges::default();
    let v = Viewer {
        coord: coord(LYON),
        bitrate_mbps: 2.5,
    };
    let mut c = world();
    c[1].health = Health::Draining; // par
    c[0].egress_mbps = 949.0; // fra: 949 + 2.5 ≥ 950
    assert_eq!(eligibility(&c[1], &r, &v), Err(Ineligible::NotUp));
    assert_eq!(eligibility(&c[0], &r, &v), Err(Ineligible::OverLimit));
    let mut s = c[2];
    s.health = Health::Suspect;
    assert_eq!(eligibility(&s, &r, &v), Err(Ineligible::NotUp));
    s.health = Health::Up;
    s.public_url = "";
    assert_eq!(eligibility(&s, &r, &v), Err(Ineligible::NoPublicUrl));
    let p = RankParams {
        exploration_share: 1.0,
        explore_max_gap: 1.0,
        ..RankParams::default()
    };
    let w = Weights::default();
    for seed in 0..200 {
        let input = rank_input(&w, &r, &p, 0, v, 4);
        let out = rank(&input, &c, &mut StdRng::seed_from_u64(seed));
        assert_eq!(out.eligible, 2);
        assert!(
            out.edges
                .iter()
                .all(|e| !matches!(c[e.index].id, "par" | "fra"))
        );
    }
    c[2].health = Health::Down;
    c[3].egress_mbps = f64::NAN;
    let input = rank_input(&w, &r, &p, 0, v, 4);
    let out = rank(&input, &c, &mut StdRng::seed_from_u64(0));
    assert!(out.edges.is_empty() && out.eligible == 0);
}

#[test]
fn resolve_burst_spreads_over_near_equal_edges() {
    let ids = ["a", "b", "c"];
    let mut ledgers = [LoadLedger::default(); 3];
    let mut counts = [0usize; 3];
    let (w, r, p) = (Weights::default(), Ranges::default(), RankParams::default());
    let mut rng = StdRng::seed_from_u64(7);
    for _ in 0..1000 {
        let cands: Vec<Candidate<'_>> = ids
            .iter()
            .zip(&ledgers)
            .map(|(id, l)| Candidate {
                capacity_mbps: 10_000.0,
                assigned_mbps: l.total(),
                ..cand(id, PARIS)
            })
            .collect();
        let input = rank_input(&w, &r, &p, 0, viewer(LYON), 1);
        let out = rank(&input, &cands, &mut rng);
        let i = out.edges[0].index;
        counts[i] += 1;
        ledgers[i].assign(2.5);
    }
    assert!(counts.iter().all(|c| (200..=500).contains(c)), "{counts:?}");
}

#[test]
fn resolve_exploration_share_and_bounds() {
    let cands = world();
    let (w, r) = (Weights::default(), Ranges::default());
    let p = RankParams {
        exploration_share: 0.2,
        ..RankParams::default()
    };
    let mut rng = StdRng::seed_from_u64(3);
    let mut explored = 0;
    for _ in 0..2000 {
        let input = rank_input(&w, &r, &p, 0, viewer(LYON), 1);
        let out = rank(&input, &cands, &mut rng);
        let id = cands[out.edges[0].index].id;
        if out.decision == Decision::Explore {
            explored += 1;
            // Only Frankfurt is within the gap; Tokyo and São Paulo never.
            assert_eq!(id, "fra");
        } else {
            assert_eq!(id, "par");
        }
    }
    assert!((300..=500).contains(&explored), "{explored}");
}

#[test]
fn resolve_same_seed_same_answer() {
    let cands = world();
    let (w, r, p) = (Weights::default(), Ranges::default(), RankParams::default());
    let run = |seed| {
        let input = rank_input(
            &w,
            &r,
            &p,
            0,
            Viewer {
                coord: None,
                bitrate_mbps: 2.5,
            },
            4,
        );
        rank(&input, &cands, &mut StdRng::seed_from_u64(seed))
    };
    assert_eq!(run(9), run(9));
}

#[test]
fn resolve_ledger_survives_one_report() {
    let mut l = LoadLedger::default();
    l.assign(2.0);
    l.assign(f64::NAN);
    assert_eq!(l.total(), 2.0);
    l.on_report();
    l.assign(1.0);
    assert_eq!(l.total(), 3.0);
    l.on_report();
    assert_eq!(l.total(), 1.0);
    l.on_report();
    assert_eq!(l.total(), 0.0);
}

fn entry(id: &str, at: (f64, f64), now: i64) -> NodeEntry {
    let mut e = NodeEntry::new(
        id.into(),
        NodeInfo {
            region: "r".into(),
            coord: coord(at),
            capacity_mbps: 1000.0,
            public_url: format!("http://{id}:8080/"),
            probe_addr: String::new(),
            agent_version: String::new(),
            static_origins: BTreeMap::new(),
        },
        now,
    );
    e.session = Some(Session {
        id: "s".into(),
        started_ms: now,
        remote: String::new(),
        connection: None,
    });
    e
}

fn resolver(exploration_share: f64) -> Resolver {
    let mut reg = prometheus_client::registry::Registry::default();
    Resolver::new(
        ResolveConfig {
            exploration_share,
            ..ResolveConfig::default()
        },
        Arc::new(GeoIp::default()),
        2500.0,
        ResolveMetrics::new(&mut reg),
    )
}

fn request(stream: &str, at: Option<(f64, f64)>) -> Request {
    Request {
        stream: StreamKey::parse(stream).unwrap(),
        coord: at.and_then(coord),
        source: LocationSource::Query,
        asn: None,
        n: 3,
    }
}

#[test]
fn resolve_resolver_streams_learning_and_drain() {
    let reg = Registry::new();
    let now = 10_000;
    for (id, at) in [("par", PARIS), ("fra", FRANKFURT), ("tyo", TOKYO)] {
        reg.insert(entry(id, at, now));
    }
    let origin = Report {
        load: Some(Load {
            egress_mbps: 1.0,
            ..Default::default()
        }),
        streams: vec![StreamState {
            key: "live/x".into(),
            role: StreamRole::Origin as i32,
            bitrate_kbps: 4000.0,
            ..Default::default()
        }],
        ..Default::default()
    };
    reg.update("tyo", |e| e.apply_report(origin.clone(), now));
    for id in ["par", "fra"] {
        reg.update(id, |e| e.apply_report(Report::default(), now));
    }
    reg.tick(now, 1000);
    let r = resolver(0.0);
    let (w, ranges) = (Weights::default(), Ranges::default());
    let mut rng = StdRng::seed_from_u64(1);
    r.refresh(&reg, now);
    assert_eq!(
        r.resolve(
            &request("live/y", Some(LYON)),
            &w,
            &ranges,
            now,
            &mut rng,
            true
        ),
        Err(ResolveError::UnknownStream(
            StreamKey::parse("live/y").unwrap()
        ))
    );
    let a = r
        .resolve(
            &request("live/x", Some(LYON)),
            &w,
            &ranges,
            now,
            &mut rng,
            true,
        )
        .unwrap();
    assert_eq!(&*a.edges[0].node_id, "par");
    assert_eq!(&*a.edges[0].public_url, "http://par:8080");
    assert_eq!(a.bitrate_mbps, 4.0);
    assert_eq!(a.group, "u05k");
    // Unknown location: still an answer, ranked without distance.
    let u = r
        .resolve(&request("live/x", None), &w, &ranges, now, &mut rng, true)
        .unwrap();
    assert_eq!(u.group, "unknown");
    assert_eq!(u.edges.len(), 3);
    // Stalls reported by par for Lyon's group move Lyon to fra.
    let report = Report {
        groups: vec![stalls("u05k", 20)],
        ..Default::default()
    };
    reg.update("par", |e| e.apply_report(report, now + 1000));
    r.refresh(&reg, now + 1000);
    let a = r
        .resolve(
            &request("live/x", Some(LYON)),
            &w,
            &ranges,
            now + 1000,
            &mut rng,
            true,
        )
        .unwrap();
    assert_eq!(&*a.edges[0].node_id, "fra");
    assert!(a.edges.iter().any(|e| &*e.node_id == "par" && e.measured()));
    // Drained: gone at once.
    reg.update("fra", |e| e.draining = true);
    r.refresh(&reg, now + 1000);
    let a = r
        .resolve(
            &request("live/x", Some(LYON)),
            &w,
            &ranges,
            now + 1000,
            &mut rng,
            true,
        )
        .unwrap();
    assert!(a.edges.iter().all(|e| &*e.node_id != "fra"));
    // Nothing up: NoEligible.
    reg.tick(now + 10_000, 1000);
    r.refresh(&reg, now + 10_000);
    assert!(
        matches!(
            r.resolve(
                &request("live/x", Some(LYON)),
                &w,
                &ranges,
                now + 10_000,
                &mut rng,
                true
            ),
            Err(ResolveError::UnknownStream(_))
        ),
        "the origin is down too: no origin known"
    );
}

#[test]
fn resolve_asn_groups_fall_back_to_their_cell() {
    let reg = Registry::new();
    let now = 10_000;
    for (id, at) in [("par", PARIS), ("fra", FRANKFURT)] {
        let mut e = entry(id, at, now);
        e.info
            .static_origins
            .insert(StreamPattern::parse("live/*").unwrap(), "http://o".into());
        reg.insert(e);
        reg.update(id, |e| e.apply_report(Report::default(), now));
    }
    reg.tick(now, 1000);
    let r = resolver(0.0);
    // Agents label by cell only: par's Lyon viewers stall.
    r.observe("par", &[stalls("u05k", 20)], now);
    r.refresh(&reg, now);
    let (w, ranges) = (Weights::default(), Ranges::default());
    let mut req = request("live/x", Some(LYON));
    req.asn = Some(3215);
    let a = r
        .resolve(&req, &w, &ranges, now, &mut StdRng::seed_from_u64(1), true)
        .unwrap();
    assert_eq!(a.group, "u05k/as3215");
    assert_eq!(&*a.edges[0].node_id, "fra", "the cell's estimates apply");
    assert!(a.edges[1].measured());
}

#[test]
fn resolve_config_validation() {
    assert!(ResolveConfig::default().validate().is_ok());
    for bad in [
        ResolveConfig {
            exploration_share: 1.5,
            ..Default::default()
        },
        ResolveConfig {
            group_precision: 0,
            ..Default::default()
        },
        ResolveConfig {
            max_n: 0,
            ..Default::default()
        },
        ResolveConfig {
            location_header: Some("bad header".into()),
            ..Default::default()
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn arb_candidate() -> impl Strategy<Value = (f64, f64, u8, f64, f64, f64)> {
        (
            -60.0f64..60.0,
            -170.0f64..170.0,
            0u8..5,
            0.0f64..1_000.0,
            0.0f64..1_000.0,
            1.0f64..1_000.0,
        )
    }

    proptest! {
        /// Whatever the inputs and the RNG: only eligible candidates are
        /// answered, each once; the decision is within the exploration gap
        /// or the spread band of the best; the rest follow by score.
        #[test]
        fn resolve_answers_are_eligible_and_ordered(
            raw in proptest::collection::vec(arb_candidate(), 0..12),
            viewer in proptest::option::of((-60.0f64..60.0, -170.0f64..170.0)),
            share in 0.0f64..1.0,
            seed in any::<u64>(),
        ) {
            let ids: Vec<String> = (0..raw.len()).map(|i| format!("n{i}")).collect();
            let cands: Vec<Candidate<'_>> = raw
                .iter()
                .zip(&ids)
                .map(|(&(lat, lon, h, egress, assigned, cap), id)| Candidate {
                    health: match h {
                        0 => Health::Suspect,
                        1 => Health::Down,
                        2 => Health::Draining,
                        _ => Health::Up,
                    },
                    egress_mbps: egress,
                    assigned_mbps: assigned,
                    capacity_mbps: cap,
                    ..cand(id, (lat, lon))
                })
                .collect();
            let (w, r) = (Weights::default(), Ranges::default());
            let p = RankParams { exploration_share: share, ..RankParams::default() };
            let v = Viewer { coord: viewer.and_then(coord), bitrate_mbps: 2.5 };
            let input = rank_input(&w, &r, &p, 0, v, 20);
            let out = rank(&input, &cands, &mut StdRng::seed_from_u64(seed));
            let eligible = cands.iter().filter(|c| eligibility(c, &r, &v).is_ok()).count();
            prop_assert_eq!(out.eligible, eligible);
            prop_assert_eq!(out.edges.len(), eligible);
            let mut seen = std::collections::HashSet::new();
            for e in &out.edges {
                prop_assert!(eligibility(&cands[e.index], &r, &v).is_ok());
                prop_assert!(seen.insert(e.index));
            }
            if let Some(first) = out.edges.first() {
                let best = out.edges.iter().map(|e| e.score).fold(f64::INFINITY, f64::min);
                let bound = match out.decision {
                    Decision::Best => 0.0,
                    Decision::Spread => p.spread_band,
                    Decision::Explore => p.explore_max_gap,
                };
                prop_assert!(first.score - best <= bound + 1e-12);
                prop_assert!(out.edges[1..].windows(2).all(|w| w[0].score <= w[1].score));
            }
        }
    }
}
