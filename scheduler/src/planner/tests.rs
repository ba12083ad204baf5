use super::*;
use proptest::prelude::*;

fn node(id: &str, lat: f64, lon: f64) -> NodeView {
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
                            samples: 10,
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
        let by_id: BTreeMap<&str, &NodeView> = world.nodes.iter().map(|n| (n.id.as_str(), n)).collect();
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
            let edges: BTreeMap<&str, Vec<&str>> = p.tables.iter().map(|(id, t)| {
                let v = t.streams.iter().find(|r| r.stream == s)
                    .and_then(|r| r.upstreams.first())
                    .filter(|u| !u.node_id.is_empty())
                    .map(|u| vec![u.node_id.as_str()])
                    .unwrap_or_default();
                (id.as_str(), v)
            }).collect();
            // a backup never pulls (through primaries) from its consumer
            for (id, t) in &p.tables {
                for r in t.streams.iter().filter(|r| r.stream == s) {
                    for b in r.upstreams.iter().skip(1) {
                        let mut cur = b.node_id.as_str();
                        for _ in 0..10 {
                            prop_assert!(cur != id.as_str(), "backup {} of {} pulls from it", b.node_id, id);
                            match edges.get(cur).and_then(|v| v.first()) {
                                Some(next) => cur = next,
                                None => break,
                            }
                        }
                    }
                }
            }
            fn cyclic<'a>(n: &'a str, e: &BTreeMap<&'a str, Vec<&'a str>>, stack: &mut Vec<&'a str>, done: &mut BTreeSet<&'a str>) -> bool {
                if stack.contains(&n) { return true; }
                if done.contains(n) { return false; }
                stack.push(n);
                for m in e.get(n).into_iter().flatten() {
                    if cyclic(m, e, stack, done) { return true; }
                }
                stack.pop();
                done.insert(n);
                false
            }
            let mut done = BTreeSet::new();
            for n in edges.keys() {
                prop_assert!(!cyclic(n, &edges, &mut Vec::new(), &mut done), "loop for {}", s);
            }
        }
    }

    #[test]
    fn plans_are_deterministic(world in arb_world()) {
        let a = plan(&world);
        let b = plan(&world);
        prop_assert_eq!(a.tables, b.tables);
    }
}
