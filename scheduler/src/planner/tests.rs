use super::*;
use proptest::prelude::*;
use std::collections::BTreeSet;
use vantage_shared::score;

/// An up node at (`lat`, `lon`) with 1 Gbit/s and nothing measured (also
/// used by the trace tests).
pub(crate) fn node(id: &str, lat: f64, lon: f64) -> NodeView {
    NodeView {
        id: id.into(),
        health: Health::Up,
        coord: Coord::new(lat, lon),
        capacity_mbps: 1000.0,
        egress_mbps: 0.0,
        buffer_ms: None,
        public_url: format!("http://{id}:8080"),
        probe_addr: format!("{id}:7402"),
        paths: BTreeMap::new(),
        published: BTreeMap::new(),
        static_origins: BTreeMap::new(),
    }
}

fn publish(n: &mut NodeView, key: &str) {
    n.published.insert(StreamKey::parse(key).unwrap(), 2000.0);
}

fn input(nodes: Vec<NodeView>) -> PlanInput {
    PlanInput {
        now_ms: 1_700_000_000_000,
        weights: Weights::default(),
        weights_version: 1,
        ranges: Ranges::default(),
        stability: Stability::default(),
        limits: Limits::default(),
        report_interval_ms: 1000,
        table_ttl_s: 3600,
        nodes,
        previous: BTreeMap::new(),
        probe_key: vec![7; 32],
        previous_backups: BTreeMap::new(),
    }
}

/// Paris origin, European and far-away edges.
fn europe() -> Vec<NodeView> {
    let mut par = node("par", 48.85, 2.35);
    publish(&mut par, "live/x");
    vec![
        par,
        node("fra", 50.11, 8.68),
        node("ams", 52.37, 4.90),
        node("lon", 51.51, -0.13),
        node("mad", 40.42, -3.70),
        node("tyo", 35.68, 139.65),
        node("sao", -23.55, -46.63),
    ]
}

fn route<'a>(p: &'a Plan, node: &str, stream: &str) -> &'a StreamRoute {
    p.tables[node]
        .streams
        .iter()
        .find(|s| s.stream == stream)
        .unwrap_or_else(|| panic!("{node} has no route for {stream}"))
}

fn ids(r: &StreamRoute) -> Vec<&str> {
    r.upstreams.iter().map(|u| u.node_id.as_str()).collect()
}

#[test]
fn nearby_edges_pull_from_origin_with_backups() {
    let p = plan(&input(europe()));
    // the publisher needs no route for its own stream
    assert!(p.tables["par"].streams.is_empty());
    let fra = route(&p, "fra", "live/x");
    assert_eq!(fra.upstreams[0].node_id, "par");
    assert_eq!(fra.upstreams[0].hops, 0);
    assert!(
        fra.upstreams.len() >= 3,
        "origin + at least 2 backups: {:?}",
        ids(fra)
    );
    for r in p.tables.values().flat_map(|t| &t.streams) {
        for u in &r.upstreams {
            assert!(u.score.is_finite() && u.score >= 0.0);
        }
    }
    // every table carries the plan parameters
    assert_eq!(p.tables["tyo"].weights_version, 1);
    assert_eq!(p.tables["tyo"].probe_key, vec![7; 32]);
    assert_eq!(p.tables["tyo"].report_interval_ms, 1000);
}

#[test]
fn deterministic_whatever_the_input_order() {
    let a = plan(&input(europe()));
    let mut shuffled = europe();
    shuffled.reverse();
    shuffled.swap(1, 4);
    let b = plan(&input(shuffled));
    assert_eq!(a.tables, b.tables);
    assert_eq!(a.primaries, b.primaries);
}

#[test]
fn down_draining_and_overloaded_nodes_are_never_upstreams() {
    let mut nodes = europe();
    nodes[1].health = Health::Down; // fra
    nodes[2].health = Health::Draining; // ams
    nodes[3].egress_mbps = 990.0; // lon at 99 %
    let p = plan(&input(nodes));
    for t in p.tables.values() {
        for r in &t.streams {
            for u in &r.upstreams {
                assert!(
                    !["fra", "ams", "lon"].contains(&u.node_id.as_str()),
                    "{t:?}"
                );
            }
        }
    }
    // the down node still gets a table (it may come back), naming live upstreams
    assert_eq!(route(&p, "fra", "live/x").upstreams[0].node_id, "par");
    // a down node is not probed
    assert!(
        p.tables["mad"]
            .probe_targets
            .iter()
            .all(|t| t.node_id != "fra")
    );
}

#[test]
fn a_degraded_direct_path_is_routed_around_through_a_relay() {
    let mut nodes = europe();
    let path = |rtt, loss| PathStat {
        rtt_ms: rtt,
        loss,
        samples: 50,
    };
    // Madrid measures the direct path to Paris as terrible and Frankfurt as fine;
    // Frankfurt measures Paris as fine.
    nodes[4].paths.insert("par".into(), path(280.0, 0.04));
    nodes[4].paths.insert("fra".into(), path(20.0, 0.0));
    nodes[1].paths.insert("par".into(), path(8.0, 0.0));
    let p = plan(&input(nodes));
    let mad = route(&p, "mad", "live/x");
    assert_ne!(mad.upstreams[0].node_id, "par", "{:?}", ids(mad));
    assert_eq!(mad.upstreams[0].hops, 1);
    assert!(ids(mad).contains(&"par"), "origin stays as a backup");
}

#[test]
fn a_fresh_path_does_not_hide_the_measured_reverse_direction() {
    let nodes = europe();
    let (par, fra) = (nodes[0].clone(), nodes[1].clone());
    let path = |rtt, samples| PathStat {
        rtt_ms: rtt,
        loss: 0.0,
        samples,
    };
    let (ranges, limits) = (Ranges::default(), Limits::default());
    let rtt = |par: &NodeView, fra: &NodeView| {
        let i = edge_inputs(par, fra, &ranges, &limits, 0.0);
        (i.rtt_ms.value, i.rtt_ms.source)
    };
    // Only Paris has measured the pair: its samples count for Frankfurt.
    let mut p = par.clone();
    p.paths.insert("fra".into(), path(3.0, 20));
    let mut f = fra.clone();
    assert_eq!(rtt(&p, &f), (3.0, score::Source::Measured));
    // Frankfurt's own first samples (too few to count) do not hide them.
    f.paths.insert("par".into(), path(90.0, 2));
    assert_eq!(rtt(&p, &f), (3.0, score::Source::Measured));
    // Once Frankfurt's own are enough, they come first.
    f.paths.insert("par".into(), path(9.0, 5));
    assert_eq!(rtt(&p, &f), (9.0, score::Source::Measured));
    // With neither direction measured, the distance models the RTT.
    let (modelled, source) = rtt(&par, &fra);
    assert_ne!(source, score::Source::Measured, "{modelled}");
}

#[test]
fn hysteresis_keeps_previous_choice_unless_clearly_better() {
    let mut i = input(europe());
    let first = plan(&i);
    let lon = route(&first, "lon", "live/x");
    let alt = lon.upstreams[1].node_id.clone();
    // pretend last plan chose the runner-up: it is near-equal, so it is kept
    i.previous
        .insert(("lon".into(), "live/x".into()), alt.clone());
    let second = plan(&i);
    let gap = route(&first, "lon", "live/x").upstreams[1].score
        - route(&first, "lon", "live/x").upstreams[0].score;
    if !i.stability.should_switch(
        route(&first, "lon", "live/x").upstreams[1].score,
        route(&first, "lon", "live/x").upstreams[0].score,
    ) {
        assert_eq!(
            route(&second, "lon", "live/x").upstreams[0].node_id,
            alt,
            "gap {gap}"
        );
    } else {
        assert_ne!(
            route(&second, "lon", "live/x").upstreams[0].node_id,
            alt,
            "gap {gap}"
        );
    }
    // a previous choice that is now down is dropped
    i.nodes.iter_mut().find(|n| n.id == alt).unwrap().health = Health::Down;
    let third = plan(&i);
    assert_ne!(route(&third, "lon", "live/x").upstreams[0].node_id, alt);
}

#[test]
fn static_origin_patterns_route_through_configured_nodes() {
    let mut nodes = europe();
    nodes[0].published.clear();
    nodes[1].static_origins.insert(
        StreamPattern::parse("live/*").unwrap(),
        "http://origin.example:80".into(),
    );
    let p = plan(&input(nodes));
    let fra = route(&p, "fra", "live/*");
    assert_eq!(fra.upstreams[0].kind, UpstreamKind::Origin as i32);
    assert_eq!(fra.upstreams[0].url, "http://origin.example:80");
    let ams = route(&p, "ams", "live/*");
    assert_eq!(ams.upstreams[0].node_id, "fra");
}

#[test]
fn probe_targets_are_bounded_and_include_upstreams() {
    let mut nodes = europe();
    for i in 0..40 {
        nodes.push(node(&format!("x{i:02}"), 45.0 + i as f64 * 0.1, 5.0));
    }
    let p = plan(&input(nodes));
    for (id, t) in &p.tables {
        assert!(t.probe_targets.len() <= Limits::default().probe_max, "{id}");
        assert!(t.probe_targets.iter().all(|pt| &pt.node_id != id));
        for r in &t.streams {
            for u in r.upstreams.iter().filter(|u| !u.node_id.is_empty()).take(2) {
                assert!(
                    t.probe_targets.iter().any(|pt| pt.node_id == u.node_id),
                    "{id} does not probe its upstream {}",
                    u.node_id
                );
            }
        }
    }
}

#[test]
fn load_accounting_spreads_a_burst_of_consumers() {
    // 30 edges next to each other and to a small origin (20 Mbps, 2 Mbps stream):
    // load accounting must push later consumers to the relays instead of
    // assigning all 30 pulls (60 Mbps) to the origin.
    let mut origin = node("origin", 48.0, 2.0);
    origin.capacity_mbps = 20.0;
    publish(&mut origin, "live/big");
    let mut nodes = vec![origin];
    for r in ["r1", "r2", "r3"] {
        nodes.push(node(r, 48.85, 2.35));
    }
    for i in 0..30 {
        nodes.push(node(&format!("e{i:02}"), 48.86, 2.36));
    }
    let p = plan(&input(nodes));
    let mut per_upstream: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..30 {
        let r = route(&p, &format!("e{i:02}"), "live/big");
        *per_upstream
            .entry(r.upstreams[0].node_id.clone())
            .or_default() += 1;
    }
    let max = per_upstream.values().max().copied().unwrap_or(0);
    assert!(
        max < 30,
        "all consumers herded onto one upstream: {per_upstream:?}"
    );
    assert!(
        per_upstream.get("origin").copied().unwrap_or(0) <= 10,
        "{per_upstream:?}"
    );
    assert!(per_upstream.len() >= 2, "{per_upstream:?}");
}

#[test]
fn spreading_hash_is_the_shared_rendezvous_hash() {
    let i = input(europe());
    let ctx = Ctx::new(&i);
    for u in 0..ctx.nodes.len() {
        for c in 0..ctx.nodes.len() {
            let salt = format!("{}\u{1f}live/x", ctx.nodes[c].id);
            assert_eq!(
                ctx.spread_hash(u, c, "live/x"),
                rendezvous(&ctx.nodes[u].id, &salt)
            );
        }
        let salt = format!("{}\u{1f}vod/*", ctx.nodes[u].id);
        assert_eq!(ctx.spread_hash(NONE, u, "vod/*"), rendezvous("", &salt));
    }
}

/// Origin `o`, consumer `c` and four relays at one place between them
/// whose buffer health sets their order as `c`'s backups, 0.0125 apart
/// in score: near-equal in the hysteresis sense (< 0.02), yet outside the
/// spreading band (0.01).
fn backup_world(buffers: [f64; 4]) -> Vec<NodeView> {
    let mut o = node("o", 48.0, 2.0);
    publish(&mut o, "live/x");
    let mut nodes = vec![o, node("c", 52.0, 2.0)];
    for (i, b) in buffers.into_iter().enumerate() {
        let mut r = node(&format!("r{}", i + 1), 50.0, 2.0);
        r.buffer_ms = Some(b);
        nodes.push(r);
    }
    nodes
}

fn backups_of_c(p: &Plan) -> Vec<&str> {
    let r = route(p, "c", "live/x");
    assert_eq!(r.upstreams[0].node_id, "o", "{:?}", ids(r));
    ids(r)[1..].to_vec()
}

#[test]
fn backup_order_keeps_near_equal_backups_in_place() {
    let first = plan(&input(backup_world([2000.0, 1900.0, 1800.0, 1700.0])));
    assert_eq!(backups_of_c(&first), ["r1", "r2", "r3"]);
    assert_eq!(
        first.backups[&("c".to_owned(), "live/x".to_owned())],
        ["r1", "r2", "r3"]
    );
    // r1 and r2 swap places by a near-equal margin: a fresh plan reorders
    // them, a plan with the previous backups keeps the published order.
    let mut next = input(backup_world([1900.0, 2000.0, 1800.0, 1700.0]));
    assert_eq!(backups_of_c(&plan(&next)), ["r2", "r1", "r3"]);
    next.previous = first.primaries.clone();
    next.previous_backups = first.backups.clone();
    let stable = plan(&next);
    assert_eq!(backups_of_c(&stable), ["r1", "r2", "r3"]);
    // ...and keeps doing so from its own output (a fixed point).
    next.previous = stable.primaries.clone();
    next.previous_backups = stable.backups.clone();
    assert_eq!(plan(&next).tables, stable.tables);
}

#[test]
fn backup_hysteresis_gives_way_to_a_clearly_better_candidate() {
    let first = plan(&input(backup_world([2000.0, 1900.0, 1800.0, 1700.0])));
    // r1's buffers run dry: r4, clearly better now, takes its place.
    let mut next = input(backup_world([0.0, 1900.0, 1800.0, 1700.0]));
    next.previous = first.primaries.clone();
    next.previous_backups = first.backups.clone();
    let replaced = plan(&next);
    let mut got = backups_of_c(&replaced);
    got.sort_unstable();
    assert_eq!(got, ["r2", "r3", "r4"]);
    // A previous backup that went down is dropped at once; the others stay
    // in order and the best new candidate fills the place.
    let mut nodes = backup_world([2000.0, 1900.0, 1800.0, 1700.0]);
    nodes.iter_mut().find(|n| n.id == "r2").unwrap().health = Health::Down;
    let mut next = input(nodes);
    next.previous = first.primaries.clone();
    next.previous_backups = first.backups.clone();
    assert_eq!(backups_of_c(&plan(&next)), ["r1", "r3", "r4"]);
    // Unknown ids in the previous state are ignored; r3 is kept, r1 and r4
    // fill the free places, and r1, two steps (0.025) better than r3, is
    // clearly better and passes it while r4 (one step worse) stays behind.
    next.previous_backups.insert(
        ("c".into(), "live/x".into()),
        vec!["gone".into(), "r3".into()],
    );
    assert_eq!(backups_of_c(&plan(&next)), ["r1", "r3", "r4"]);
    next.previous_backups.insert(
        ("c".into(), "live/x".into()),
        vec!["r4".into(), "r3".into()],
    );
    assert_eq!(backups_of_c(&plan(&next)), ["r1", "r4", "r3"]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The planner's indexed edge inputs are `edge_inputs`, bit for bit.
    #[test]
    fn indexed_edge_inputs_equal_edge_inputs(world in arb_world()) {
        let ctx = Ctx::new(&world);
        for u in 0..ctx.nodes.len() {
            for n in 0..ctx.nodes.len() {
                let want = edge_inputs(ctx.nodes[u], ctx.nodes[n], &world.ranges, &world.limits, 0.0);
                let got = ctx.edge_inputs_at(u, n);
                prop_assert_eq!(format!("{got:?}"), format!("{want:?}"));
                prop_assert_eq!(got.km.value.to_bits(), want.km.value.to_bits());
            }
        }
    }
}

fn arb_world() -> impl Strategy<Value = PlanInput> {
    (3usize..25, any::<u64>()).prop_map(|(n, seed)| {
        let mut rng = seed;
        let mut next = move || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut nodes: Vec<NodeView> = (0..n)
            .map(|i| {
                let mut v = node(
                    &format!("n{i}"),
                    next() * 120.0 - 60.0,
                    next() * 300.0 - 150.0,
                );
                v.egress_mbps = next() * 1000.0;
                v.health = match (next() * 10.0) as u32 {
                    0 => Health::Down,
                    1 => Health::Suspect,
                    2 => Health::Draining,
                    _ => Health::Up,
                };
                v
            })
            .collect();
        for i in 0..n {
            for j in 0..n {
                if i != j && next() < 0.3 {
                    let id = nodes[j].id.clone();
                    nodes[i].paths.insert(
                        id,
                        PathStat {
                            rtt_ms: next() * 300.0,
                            loss: next() * 0.1,
                            // Some too few to count (`min_path_samples`).
                            samples: if next() < 0.2 { 2 } else { 10 },
                        },
                    );
                }
            }
        }
        let streams = 1 + (next() * 3.0) as usize;
        for s in 0..streams {
            let o = (next() * n as f64) as usize % n;
            publish(&mut nodes[o], &format!("live/s{s}"));
        }
        input(nodes)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Primaries never loop, a backup never pulls from its consumer, the
    /// relay-hop bound holds and no ineligible node is named.
    #[test]
    fn candidate_graph_is_acyclic_and_bounded(world in arb_world()) {
        let p = plan(&world);
        check_invariants(&world, &p)?;
    }

    /// The same, when the previous plan was made on other loads and
    /// health (hysteresis of primaries and backups at work).
    #[test]
    fn invariants_hold_with_hysteresis(world in arb_world(), seed in any::<u64>()) {
        let first = plan(&world);
        let mut next = world.clone();
        let mut rng = seed;
        for n in &mut next.nodes {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            match rng >> 60 {
                0 => n.health = Health::Down,
                1 => n.health = Health::Up,
                _ => {}
            }
            n.egress_mbps = ((rng >> 11) % 1000) as f64;
        }
        next.previous = first.primaries;
        next.previous_backups = first.backups;
        let p = plan(&next);
        check_invariants(&next, &p)?;
    }

    /// A plan made with its own output as hysteresis state changes nothing:
    /// in steady state, tables keep their version.
    #[test]
    fn a_plan_is_a_fixed_point_of_its_own_hysteresis(world in arb_world()) {
        let first = plan(&world);
        let mut again = world.clone();
        again.previous = first.primaries.clone();
        again.previous_backups = first.backups.clone();
        let second = plan(&again);
        prop_assert_eq!(second.tables, first.tables);
        prop_assert_eq!(second.backups, first.backups);
    }

    /// Threads change nothing (the world is made large enough to use them).
    #[test]
    fn threads_do_not_change_the_plan(world in arb_world(), extra in 250usize..300) {
        let mut big = world.clone();
        for i in 0..extra {
            big.nodes.push(node(&format!("z{i:03}"), (i % 120) as f64 - 60.0, (i * 7 % 300) as f64 - 150.0));
        }
        let one = plan(&big);
        let three = plan_with_threads(&big, 3);
        prop_assert_eq!(&one.tables, &three.tables);
        prop_assert_eq!(one.primaries, three.primaries);
    }

    #[test]
    fn plans_are_deterministic(world in arb_world()) {
        let a = plan(&world);
        let b = plan(&world);
        prop_assert_eq!(a.tables, b.tables);
    }
}

fn check_invariants(world: &PlanInput, p: &Plan) -> Result<(), TestCaseError> {
    {
        let by_id: BTreeMap<&str, &NodeView> =
            world.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let mut streams = BTreeSet::new();
        for t in p.tables.values() {
            for r in &t.streams {
                streams.insert(r.stream.clone());
                prop_assert!(r.upstreams.len() <= 1 + world.limits.max_backups);
                let mut seen = BTreeSet::new();
                for u in &r.upstreams {
                    prop_assert!(u.node_id != t.node_id);
                    prop_assert!(seen.insert(u.node_id.clone()), "duplicate candidate");
                    prop_assert!(u.hops <= world.limits.max_relay_hops);
                    let un = by_id[u.node_id.as_str()];
                    prop_assert!(eligible(un, &world.ranges));
                }
            }
        }
        for s in streams {
            // DFS over "pulls from" edges of primaries
            let edges: BTreeMap<&str, Vec<&str>> = p
                .tables
                .iter()
                .map(|(id, t)| {
                    let v = t
                        .streams
                        .iter()
                        .find(|r| r.stream == s)
                        .and_then(|r| r.upstreams.first())
                        .filter(|u| !u.node_id.is_empty())
                        .map(|u| vec![u.node_id.as_str()])
                        .unwrap_or_default();
                    (id.as_str(), v)
                })
                .collect();
            // a backup never pulls (through primaries) from its consumer
            for (id, t) in &p.tables {
                for r in t.streams.iter().filter(|r| r.stream == s) {
                    for b in r.upstreams.iter().skip(1) {
                        let mut cur = b.node_id.as_str();
                        for _ in 0..10 {
                            prop_assert!(
                                cur != id.as_str(),
                                "backup {} of {} pulls from it",
                                b.node_id,
                                id
                            );
                            match edges.get(cur).and_then(|v| v.first()) {
                                Some(next) => cur = next,
                                None => break,
                            }
                        }
                    }
                }
            }
            fn cyclic<'a>(
                n: &'a str,
                e: &BTreeMap<&'a str, Vec<&'a str>>,
                stack: &mut Vec<&'a str>,
                done: &mut BTreeSet<&'a str>,
            ) -> bool {
                if stack.contains(&n) {
                    return true;
                }
                if done.contains(n) {
                    return false;
                }
                stack.push(n);
                for m in e.get(n).into_iter().flatten() {
                    if cyclic(m, e, stack, done) {
                        return true;
                    }
                }
                stack.pop();
                done.insert(n);
                false
            }
            let mut done = BTreeSet::new();
            for n in edges.keys() {
                prop_assert!(
                    !cyclic(n, &edges, &mut Vec::new(), &mut done),
                    "loop for {}",
                    s
                );
            }
        }
    }
    Ok(())
}

// The optimised stages against straightforward references.

/// `arb_world` with, at random, exact ties (no coordinates, so every pair
/// is equally far, and identical measurements), static-origin patterns
/// that sort before the streams or share a stream's route, and other hop
/// and candidate bounds.
fn arb_tied_world() -> impl Strategy<Value = PlanInput> {
    (arb_world(), any::<u64>()).prop_map(|(mut world, seed)| {
        let bit = |k: u32| (seed >> k) & 1 == 1;
        if bit(0) {
            for (i, v) in world.nodes.iter_mut().enumerate() {
                if bit(1) || i % 3 == 0 {
                    v.coord = None;
                }
                v.egress_mbps = 100.0;
                for p in v.paths.values_mut() {
                    *p = PathStat {
                        rtt_ms: 40.0,
                        loss: 0.0,
                        samples: 10,
                    };
                }
            }
        }
        if bit(2) {
            let n = world.nodes.len();
            for (k, pattern) in ["live/*", "live/s1", "zz/*"].iter().enumerate() {
                let o = (seed >> (8 + 4 * k)) as usize % n;
                world.nodes[o].static_origins.insert(
                    StreamPattern::parse(pattern).unwrap(),
                    format!("http://origin{k}:80"),
                );
            }
        }
        if bit(3) {
            world.limits.max_relay_hops = (seed >> 20) as u32 % 4;
            world.limits.relay_candidates = 1 + (seed >> 24) as usize % 6;
            world.limits.probe_nearest = (seed >> 28) as usize % 6;
        }
        world
    })
}

/// The layered Bellman–Ford as first written: every offer in every round.
fn path_costs_reference(
    ctx: &Ctx<'_>,
    load: &[f64],
    src: &Source,
    edges: &RootEdges,
    is_root: &[bool],
) -> (Vec<f64>, Vec<u32>) {
    let n = ctx.nodes.len();
    let max_hops = ctx.input.limits.max_relay_hops;
    let mut cost = vec![f64::INFINITY; n];
    let mut hops = vec![u32::MAX; n];
    for &(r, _) in &src.roots {
        cost[r] = 0.0;
        hops[r] = 0;
    }
    for _edge in 0..=max_hops {
        let (prev_cost, prev_hops) = (cost.clone(), hops.clone());
        for v in (0..n).filter(|&v| !is_root[v]) {
            let via_roots = src
                .roots
                .iter()
                .enumerate()
                .filter(|(_, (r, _))| ctx.eligible[*r])
                .map(|(k, &(r, _))| (r, edges[k][v]));
            for (u, e) in via_roots.chain(ctx.neighbours(v).iter().copied()) {
                if !prev_cost[u].is_finite() || prev_hops[u] > max_hops {
                    continue;
                }
                let c = prev_cost[u] + (e + load[u]);
                if c < cost[v] - 1e-12 {
                    cost[v] = c;
                    hops[v] = prev_hops[u] + 1;
                }
            }
        }
    }
    (cost, hops)
}

/// Each node's relay candidates and nearest probe targets as first
/// written: two walks of the R-tree, peers by id.
#[allow(clippy::type_complexity)]
fn nearest_reference(ctx: &Ctx<'_>) -> (Vec<Vec<(usize, f64)>>, Vec<Vec<usize>>) {
    let n = ctx.nodes.len();
    let limits = &ctx.input.limits;
    let nearest = |i: usize, limit: usize, scan: usize, keep: &dyn Fn(usize) -> bool| {
        let Some(c) = ctx.nodes[i].coord else {
            return Vec::new();
        };
        ctx.spatial
            .nearest_neighbor_iter(&c.sphere_point())
            .map(|p| p.data)
            .filter(|&u| u != i)
            .take(scan)
            .filter(|&u| keep(u))
            .take(limit)
            .collect::<Vec<usize>>()
    };
    let k = limits.relay_candidates.max(1);
    let relays = (0..n)
        .map(|v| {
            let mut pool = if ctx.nodes[v].coord.is_some() {
                nearest(v, 2 * k, 16 * k + 64, &|u| ctx.eligible[u])
            } else {
                (0..n).filter(|&u| u != v && ctx.eligible[u]).collect()
            };
            for (u, node) in ctx.nodes.iter().enumerate() {
                if node.paths.contains_key(&ctx.nodes[v].id) {
                    pool.push(u);
                }
            }
            pool.extend(
                ctx.nodes[v]
                    .paths
                    .keys()
                    .filter_map(|p| ctx.index.get(p.as_str()).copied()),
            );
            pool.retain(|&u| u != v && ctx.eligible[u]);
            pool.sort_unstable();
            pool.dedup();
            let mut e: Vec<(usize, f64)> =
                pool.iter().map(|&u| (u, ctx.static_edge(u, v))).collect();
            e.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            e.truncate(k);
            e
        })
        .collect();
    let probeable = |u: usize| {
        !ctx.nodes[u].probe_addr.is_empty() && !matches!(ctx.nodes[u].health, Health::Down)
    };
    let probes = (0..n)
        .map(|i| {
            let pn = limits.probe_nearest;
            nearest(i, pn, 8 * pn + 32, &probeable)
        })
        .collect();
    (relays, probes)
}

/// The previous plan's choices by source and consumer as first written:
/// routes and ids hashed.
#[allow(clippy::type_complexity)]
fn previous_reference(
    ctx: &Ctx<'_>,
    sources: &[Source],
) -> (Vec<Vec<usize>>, Vec<Vec<[u32; STICKY]>>) {
    let n = ctx.nodes.len();
    let mut by_route: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (s, src) in sources.iter().enumerate() {
        by_route.entry(src.route.as_str()).or_default().push(s);
    }
    let mut primary = vec![Vec::new(); sources.len()];
    let mut backups = vec![Vec::new(); sources.len()];
    for ((node, route), up) in &ctx.input.previous {
        let (Some(&c), Some(&u), Some(ss)) = (
            ctx.index.get(node.as_str()),
            ctx.index.get(up.as_str()),
            by_route.get(route.as_str()),
        ) else {
            continue;
        };
        for &s in ss {
            let v: &mut Vec<usize> = &mut primary[s];
            if v.is_empty() {
                v.resize(n, NONE);
            }
            v[c] = u;
        }
    }
    for ((node, route), ups) in &ctx.input.previous_backups {
        let (Some(&c), Some(ss)) = (ctx.index.get(node.as_str()), by_route.get(route.as_str()))
        else {
            continue;
        };
        let mut list = [NO_BACKUP; STICKY];
        let known = ups.iter().filter_map(|id| match id.as_str() {
            "" => Some(ORIGIN_BACKUP),
            id => ctx.index.get(id).map(|&u| u as u32),
        });
        for (slot, u) in list.iter_mut().zip(known) {
            *slot = u;
        }
        for &s in ss {
            let v: &mut Vec<[u32; STICKY]> = &mut backups[s];
            if v.is_empty() {
                v.resize(n, [NO_BACKUP; STICKY]);
            }
            v[c] = list;
        }
    }
    (primary, backups)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Relay candidates and nearest probe targets from one walk of the
    /// R-tree per node are those of two separate walks.
    #[test]
    fn nearest_peers_equal_the_reference(world in arb_tied_world()) {
        let mut ctx = Ctx::new(&world);
        ctx.set_nearest_peers(nearest_peers(&ctx, true, 1));
        let (relays, probes) = nearest_reference(&ctx);
        for v in 0..ctx.nodes.len() {
            prop_assert_eq!(format!("{:?}", ctx.neighbours(v)), format!("{:?}", relays[v]));
            prop_assert_eq!(&ctx.near_probes[v], &probes[v]);
        }
    }

    /// Path costs that skip repeated offers are those of every offer in
    /// every round, bit for bit, whatever the load terms.
    #[test]
    fn path_costs_equal_the_reference(world in arb_tied_world(), loads in any::<u64>()) {
        let mut ctx = Ctx::new(&world);
        ctx.set_nearest_peers(nearest_peers(&ctx, true, 1));
        let n = ctx.nodes.len();
        // a few distinct load terms, so that offers tie exactly
        let load: Vec<f64> = (0..n).map(|u| ((loads >> (u % 60)) & 3) as f64 * 0.05).collect();
        let sources = collect_sources(&ctx);
        let mut work = Work::new(n);
        let (mut edges, mut hops) = (RootEdges::new(), vec![0; n]);
        for src in &sources {
            for &(r, _) in &src.roots {
                work.is_root[r] = true;
            }
            root_edges(&ctx, src, &mut edges);
            path_costs(&ctx, &load, src, &edges, &mut work, &mut hops);
            let (want_cost, want_hops) =
                path_costs_reference(&ctx, &load, src, &edges, &work.is_root);
            for v in 0..n {
                prop_assert_eq!(work.cost[v].to_bits(), want_cost[v].to_bits(), "{}", v);
                prop_assert_eq!(hops[v], want_hops[v]);
            }
            for &(r, _) in &src.roots {
                work.is_root[r] = false;
            }
        }
    }

    /// The previous plan's choices found by walking the sorted keys are
    /// those found by hashing every key.
    #[test]
    fn previous_index_equals_the_reference(world in arb_tied_world(), seed in any::<u64>()) {
        let first = plan(&world);
        let mut next = world.clone();
        next.previous = first.primaries;
        next.previous_backups = first.backups;
        // entries of nodes, routes and upstreams that are gone
        next.previous.insert(("gone".into(), "live/s0".into()), "n1".into());
        next.previous.insert(("n0".into(), "gone".into()), "n1".into());
        next.previous.insert(("n1".into(), "live/s0".into()), "gone".into());
        next.previous_backups.insert(
            ("n2".into(), "live/s1".into()),
            vec!["gone".into(), "".into(), "n0".into()],
        );
        if seed & 1 == 1 {
            next.nodes.retain(|v| v.id != "n1");
        }
        let ctx = Ctx::new(&next);
        let sources = collect_sources(&ctx);
        let got = Previous::index(&ctx, &sources, 1 + (seed >> 1) as usize % 2);
        let (primary, backups) = previous_reference(&ctx, &sources);
        prop_assert_eq!(got.primary, primary);
        prop_assert_eq!(got.backups, backups);
    }

    /// The primaries and backups for the next plan are the tables'
    /// choices (for two sources of one route, the later one's; backups of
    /// the later one that has any).
    #[test]
    fn primaries_and_backups_are_the_tables_choices(world in arb_tied_world()) {
        let p = plan(&world);
        let mut primaries = Primaries::new();
        let mut backups = Backups::new();
        for (id, t) in &p.tables {
            for r in &t.streams {
                let key = (id.clone(), r.stream.clone());
                primaries.insert(key.clone(), r.upstreams[0].node_id.clone());
                if r.upstreams.len() > 1 {
                    let rest = r.upstreams[1..].iter().map(|u| u.node_id.clone()).collect();
                    backups.insert(key, rest);
                }
            }
        }
        prop_assert_eq!(p.primaries, primaries);
        prop_assert_eq!(p.backups, backups);
    }

    /// Candidates sorted as integers are in the order of `total_cmp` then
    /// key, and decode to the same bits.
    #[test]
    fn rank_keys_sort_as_total_cmp(
        totals in proptest::collection::vec(
            prop_oneof![
                any::<f64>(),
                Just(0.0),
                Just(-0.0),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(f64::NAN),
                (0.0..1.0f64),
            ],
            1..40,
        ),
        nodes in proptest::collection::vec(prop_oneof![Just(NONE), 0usize..8], 40),
    ) {
        let cands: Vec<Cand> = totals
            .iter()
            .zip(&nodes)
            .map(|(&total, &node)| Cand { node, total })
            .collect();
        let mut want = cands.clone();
        want.sort_by(|a, b| a.total.total_cmp(&b.total).then(a.key().cmp(&b.key())));
        let mut keys: Vec<u128> = cands.iter().map(Cand::rank_key).collect();
        keys.sort_unstable();
        for (k, w) in keys.iter().zip(&want) {
            let c = Cand::from_rank_key(*k);
            prop_assert_eq!(c.node, w.node);
            prop_assert_eq!(c.total.to_bits(), w.total.to_bits());
        }
    }
}
