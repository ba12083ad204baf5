//! Issue 20 (live comments), Must show 1–3 and the routing of comment
//! clients, with the real binaries: a scheduler, origin A (the stream is
//! published there, so A numbers the room's comments) and relays B and C
//! (followers: one upstream link per room, to the video's upstream).
//!
//! 1. 300 WebSocket clients spread over B and C; 1,000 comments posted from
//!    random clients at random edges arrive at every client exactly once,
//!    in the same order everywhere; the delivery latency (post sent →
//!    comment received, same clock) is measured and printed (p50/p99/max;
//!    figures in docs/benchmarks.md, "Live comments").
//! 2. B's upstream link is cut (its TCP flow through an impairment proxy
//!    stops moving): B fails over to its next candidate after the stall
//!    timeout and resumes from its last number; B's clients receive every
//!    comment, no loss, no duplicate, while posting goes on at C and B.
//! 3. A client that reconnects with its last sequence number (and epoch)
//!    receives exactly what it missed, still in the buffer; one that was
//!    away longer than the buffer is told the gap.
//!
//! Plus: `/v1/resolve` and `/play/{app}/{stream}/comments` route comment
//! clients (same client groups), and the scheduler's view of an edge's
//! load carries its comment connections and fan-out rate.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

use rand::Rng;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use vantage_tests::cluster::wait_all_up;
use vantage_tests::comments::{
    CommentClient, comments_url, connect_when_ready, poster_token, quantile, wait_keys,
};
use vantage_tests::impair::{ImpairHandle, Impairment, TcpImpair};
use vantage_tests::synth::SynthPublisher;
use vantage_tests::{Agent, AgentPorts, Scheduler, eventually};

const STREAM: &str = "live/c";

/// Flags of the test agents: posters may post 100/s (the test's posters
/// are busier than people), links stall out after 1.5 s.
fn comment_flags(b: vantage_tests::AgentBuilder) -> vantage_tests::AgentBuilder {
    b.arg("--comments-client-rate")
        .arg("100")
        .arg("--comments-client-burst")
        .arg("200")
        .arg("--comments-stall-timeout-ms")
        .arg("1500")
}

struct Cluster {
    s: Scheduler,
    a: Agent,
    b: Agent,
    c: Agent,
    publisher: SynthPublisher,
    /// Impairment proxies in front of each agent's media port, by node id
    /// (their public URLs), when asked for.
    proxies: HashMap<String, ImpairHandle>,
}

/// A scheduler, A (Paris, origin), B (Frankfurt) and C (Brussels), the
/// synthetic stream published to A, and B's and C's routes to it. With
/// `proxied`, every agent's public URL (what upstreams are reached by) is
/// a TCP impairment proxy in front of its media port.
async fn cluster(proxied: bool) -> Cluster {
    let s = Scheduler::builder().report_interval_ms(500).start().await;
    let mut proxies = HashMap::new();
    let start = |id: &'static str, region: &'static str, lat: f64, lon: f64| {
        let ports = AgentPorts::free();
        let mut builder = comment_flags(
            Agent::builder(id, &s)
                .region(region)
                .at(lat, lon)
                .ports(ports),
        );
        let proxy = proxied.then_some(ports);
        async move {
            let mut proxy_handle = None;
            if let Some(p) = proxy {
                let upstream: SocketAddr = format!("127.0.0.1:{}", p.http).parse().unwrap();
                let h = TcpImpair::start(
                    "127.0.0.1:0".parse().unwrap(),
                    upstream,
                    Impairment::default(),
                )
                .await
                .unwrap();
                builder = builder.public_url(format!("http://{}", h.local_addr()));
                proxy_handle = Some(h);
            }
            (builder.start().await, proxy_handle)
        }
    };
    let (a, pa) = start("cm-a", "eu-paris", 48.8566, 2.3522).await;
    let (b, pb) = start("cm-b", "eu-frankfurt", 50.1109, 8.6821).await;
    let (c, pc) = start("cm-c", "eu-brussels", 50.8503, 4.3517).await;
    for (id, p) in [("cm-a", pa), ("cm-b", pb), ("cm-c", pc)] {
        if let Some(p) = p {
            proxies.insert(id.to_owned(), p);
        }
    }
    wait_all_up(&s, &["cm-a", "cm-b", "cm-c"], Duration::from_secs(15)).await;
    let media: SocketAddr = a.media_url().trim_start_matches("http://").parse().unwrap();
    let publisher = SynthPublisher::start(media, &format!("/{STREAM}.flv"), 300);
    for x in [&a, &b, &c] {
        wait_keys(x, Duration::from_secs(15)).await;
    }
    Cluster {
        s,
        a,
        b,
        c,
        publisher,
        proxies,
    }
}

/// Connects `n` clients to `agent`'s room (`backlog=0`: only new comments).
async fn clients(agent: &Agent, n: usize) -> Vec<CommentClient> {
    let first = connect_when_ready(agent, STREAM, "backlog=0").await;
    let url = format!("{}?backlog=0", comments_url(agent, STREAM));
    let mut out = vec![first];
    let mut set = tokio::task::JoinSet::new();
    for _ in 1..n {
        let url = url.clone();
        set.spawn(async move { CommentClient::connect(&url).await });
    }
    while let Some(r) = set.join_next().await {
        out.push(r.unwrap().unwrap_or_else(|e| panic!("connect: {e}")));
    }
    out
}

/// The room's status at `agent`.
async fn room_status(agent: &Agent) -> Value {
    let st = agent.status().await;
    st["comments"]["rooms"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["key"] == STREAM).cloned())
        .unwrap_or(Value::Null)
}

/// Every client received exactly `texts` (in that order) once; returns the
/// numbers they carried.
fn assert_all_received(who: &str, cs: &[CommentClient], texts: &[String]) -> Vec<u64> {
    let mut seqs = None;
    for (i, c) in cs.iter().enumerate() {
        let l = c.log();
        assert!(l.gaps.is_empty(), "{who}[{i}]: gaps {:?}", l.gaps);
        let got = l.texts();
        if got != texts {
            let missing: Vec<&String> = texts.iter().filter(|t| !got.contains(t)).collect();
            let mut counts: HashMap<&String, usize> = HashMap::new();
            for t in &got {
                *counts.entry(t).or_default() += 1;
            }
            let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
            panic!(
                "{who}[{i}] received {} comments, want {}: missing {:?}…, duplicated {:?}…, first difference at {:?}",
                got.len(),
                texts.len(),
                &missing[..missing.len().min(5)],
                &dups[..dups.len().min(5)],
                got.iter().zip(texts).position(|(a, b)| a != b)
            );
        }
        let s = l.seqs();
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "{who}[{i}]: numbers not increasing"
        );
        match &seqs {
            None => seqs = Some(s),
            Some(prev) => assert_eq!(prev, &s, "{who}[{i}]: other numbers than {who}[0]"),
        }
    }
    seqs.unwrap_or_default()
}

/// Waits until every client has `n` comments (or 30 s).
async fn wait_delivered(cs: &[&CommentClient], n: usize) {
    let started = Instant::now();
    loop {
        let least = cs.iter().map(|c| c.log().comments.len()).min().unwrap_or(n);
        if least >= n {
            // A little longer: anything beyond n would be a duplicate.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        if started.elapsed() > Duration::from_secs(30) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_comments_reach_300_clients_on_two_edges_once_in_one_order() {
    let cl = cluster(false).await;
    let on_b = clients(&cl.b, 150).await;
    let on_c = clients(&cl.c, 150).await;
    let all: Vec<&CommentClient> = on_b.iter().chain(on_c.iter()).collect();
    // Every client may post.
    let token = poster_token(&cl.s, "viewer", Some("live/*")).await;
    for c in &all {
        c.auth(&token);
    }
    eventually(
        Duration::from_secs(10),
        "every client authenticated",
        || async {
            let n = all
                .iter()
                .filter(|c| c.log().auth.iter().any(|a| a["ok"] == true))
                .count();
            if n == all.len() { Ok(()) } else { Err(n) }
        },
    )
    .await;

    // 1,000 comments from random clients at random edges, ~200/s.
    const N: usize = 1000;
    let mut rng = rand::rng();
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let mut posters = Vec::new();
    let started = Instant::now();
    for i in 0..N {
        let k = rng.random_range(0..all.len());
        let text = format!("m{i:04}");
        sent_at.insert(text.clone(), Instant::now());
        all[k].post(&format!("p{i}"), &text);
        posters.push((k, i));
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let posting = started.elapsed();
    for (k, i) in &posters {
        let id = format!("p{i}");
        let r = all[*k].decision(&id, Duration::from_secs(20)).await;
        assert!(r.is_ok(), "post {id}: {r:?}");
    }
    wait_delivered(&all, N).await;

    // Same comments, once each, in one order, at every client of both edges.
    let b0 = on_b[0].log().texts();
    assert_eq!(b0.len(), N, "B[0] received {} comments", b0.len());
    let seqs_b = assert_all_received("B", &on_b, &b0);
    let seqs_c = assert_all_received("C", &on_c, &b0);
    assert_eq!(seqs_b, seqs_c, "B and C numbered differently");
    let mut sorted = b0.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), N, "a comment appears twice in B[0]'s list");

    // Delivery latency: post sent → received, over every client and comment.
    let mut lat: Vec<f64> = Vec::with_capacity(N * all.len());
    for c in &all {
        for s in &c.log().comments {
            if let Some(t0) = sent_at.get(&s.text) {
                lat.push(s.at.duration_since(*t0).as_secs_f64() * 1000.0);
            }
        }
    }
    let n = lat.len();
    let (p50, p99, max) = (
        quantile(&mut lat, 0.5),
        quantile(&mut lat, 0.99),
        quantile(&mut lat, 1.0),
    );
    eprintln!(
        "MEASURED comment delivery, {N} comments posted in {posting:.1?} to {} clients on 2 edges \
         (origin A sequencing, default 100 ms coalescing): {n} deliveries, p50 {p50:.1} ms, \
         p99 {p99:.1} ms, max {max:.1} ms",
        all.len()
    );

    // The scheduler's view of B and C carries their comment load.
    eventually(
        Duration::from_secs(10),
        "comment load in /v1/nodes",
        || async {
            let mut seen = Vec::new();
            for id in ["cm-b", "cm-c"] {
                let n = cl.s.node(id).await.unwrap_or(Value::Null);
                let conns = n["load"]["comment_connections"].as_u64().unwrap_or(0);
                seen.push((id, conns, n["load"]["comment_fanout_per_s"].clone()));
            }
            if seen.iter().all(|(_, c, _)| *c >= 150) {
                Ok(())
            } else {
                Err(seen)
            }
        },
    )
    .await;
    let (status, summary) = cl.s.get("/v1/comments").await;
    assert_eq!(status, 200);
    assert!(
        summary["connections"].as_u64().unwrap_or(0) >= 300,
        "{summary}"
    );
    for x in [&cl.b, &cl.c] {
        assert_eq!(
            x.metric("vantage_agent_comments_duplicates_total", &[])
                .await,
            0.0,
            "{} dropped duplicates",
            x.node_id()
        );
        assert!(
            x.metric("vantage_agent_comments_delivered_total", &[])
                .await
                >= (150 * N) as f64
        );
    }
    assert_eq!(
        cl.a.metric("vantage_agent_comments_sequenced_total", &[])
            .await,
        N as f64
    );
    cl.publisher.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_upstream_link_fails_over_and_fills_the_gap_from_the_buffer() {
    let cl = cluster(true).await;
    let on_b = clients(&cl.b, 20).await;
    let on_c = clients(&cl.c, 20).await;
    let poster_b = connect_when_ready(&cl.b, STREAM, "backlog=0").await;
    let poster_c = connect_when_ready(&cl.c, STREAM, "backlog=0").await;
    let token = poster_token(&cl.s, "poster", None).await;
    assert_eq!(poster_b.auth_wait(&token).await["ok"], true);
    assert_eq!(poster_c.auth_wait(&token).await["ok"], true);

    // B's upstream link, as B reports it.
    let up = eventually(Duration::from_secs(15), "B's upstream link up", || async {
        let r = room_status(&cl.b).await;
        match (
            r["upstream"]["connected"].as_bool(),
            r["upstream"]["node"].as_str(),
        ) {
            (Some(true), Some(node)) => Ok((
                node.to_owned(),
                r["upstream"]["local_addr"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )),
            _ => Err(r),
        }
    })
    .await;
    let (upstream, local) = up;
    let proxy = cl
        .proxies
        .get(&upstream)
        .unwrap_or_else(|| panic!("no proxy in front of {upstream}"));
    eprintln!("B's upstream: {upstream} (link from {local})");

    // Post from C (and B) all along; 25/s from C, 5/s from B.
    let mut texts_sent = Vec::new();
    let mut ids = Vec::new();
    let mut i = 0;
    let mut cut_at = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let (who, poster) = if i % 5 == 4 {
            ("b", &poster_b)
        } else {
            ("c", &poster_c)
        };
        let text = format!("{who}{i:04}");
        poster.post(&format!("q{i}"), &text);
        ids.push((who, format!("q{i}")));
        texts_sent.push(text);
        i += 1;
        if cut_at.is_none() && started.elapsed() > Duration::from_secs(2) {
            // Kill B's upstream: its flow through the proxy stops moving
            // (no close, no error: only the missing beats tell).
            proxy.hold(local.parse().unwrap());
            cut_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(33)).await;
    }
    for (who, id) in &ids {
        let poster = if *who == "b" { &poster_b } else { &poster_c };
        let r = poster.decision(id, Duration::from_secs(20)).await;
        assert!(r.is_ok(), "post {id} at {who}: {r:?}");
    }
    let n = texts_sent.len();
    let everyone: Vec<&CommentClient> = on_b.iter().chain(on_c.iter()).collect();
    wait_delivered(&everyone, n).await;

    // B failed over (stall) to another upstream.
    let r = room_status(&cl.b).await;
    let now_up = r["upstream"]["node"].as_str().unwrap_or("").to_owned();
    assert_ne!(now_up, upstream, "B still on {upstream}: {r}");
    assert_eq!(r["upstream"]["connected"], true, "{r}");
    let failovers =
        cl.b.metric(
            "vantage_agent_comments_failovers_total",
            &[("reason", "stalled")],
        )
        .await;
    assert!(failovers >= 1.0, "B's stalled failovers: {failovers}");
    eprintln!("B failed over from {upstream} to {now_up}");

    // Everyone, B's clients included, has every comment once, in one order.
    let reference = on_c[0].log().texts();
    assert_eq!(reference.len(), n, "C[0] has {} of {n}", reference.len());
    let seqs_c = assert_all_received("C", &on_c, &reference);
    let seqs_b = assert_all_received("B", &on_b, &reference);
    assert_eq!(seqs_b, seqs_c);
    // Numbers are contiguous: nothing was skipped during the outage.
    assert!(
        seqs_b.windows(2).all(|w| w[1] == w[0] + 1),
        "B's numbers have holes"
    );
    // B's clients saw a pause, then the missed comments at once.
    let cut_at = cut_at.unwrap_or_else(Instant::now);
    {
        let b0 = on_b[0].log();
        let during: Vec<_> = b0
            .comments
            .iter()
            .filter(|c| c.at > cut_at + Duration::from_millis(200))
            .collect();
        let first_after = during.first().map(|c| c.at.duration_since(cut_at));
        eprintln!(
            "B's clients: first comment {first_after:?} after the cut; {} comments in that batch",
            during.iter().take_while(|c| c.at == during[0].at).count()
        );
    }
    assert_eq!(
        cl.b.metric("vantage_agent_comments_gaps_total", &[]).await,
        0.0
    );
    cl.publisher.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_last_number_misses_nothing_still_buffered() {
    let s = Scheduler::builder().report_interval_ms(500).start().await;
    let a = comment_flags(
        Agent::builder("rc-a", &s)
            .region("eu-paris")
            .at(48.8566, 2.3522),
    )
    .start()
    .await;
    let b = comment_flags(
        Agent::builder("rc-b", &s)
            .region("eu-frankfurt")
            .at(50.1109, 8.6821),
    )
    .arg("--comments-buffer")
    .arg("50")
    .start()
    .await;
    wait_all_up(&s, &["rc-a", "rc-b"], Duration::from_secs(15)).await;
    let media: SocketAddr = a.media_url().trim_start_matches("http://").parse().unwrap();
    let _publisher = SynthPublisher::start(media, &format!("/{STREAM}.flv"), 300);
    wait_keys(&a, Duration::from_secs(15)).await;
    wait_keys(&b, Duration::from_secs(15)).await;
    let poster = connect_when_ready(&a, STREAM, "backlog=0").await;
    let token = poster_token(&s, "p", None).await;
    assert_eq!(poster.auth_wait(&token).await["ok"], true);
    let watcher = connect_when_ready(&b, STREAM, "backlog=0").await;
    let leaver = connect_when_ready(&b, STREAM, "backlog=0").await;

    let post_range = |from: usize, to: usize| {
        let poster = &poster;
        async move {
            for i in from..to {
                poster.post(&format!("r{i}"), &format!("t{i:03}"));
                if i % 10 == 9 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            for i in from..to {
                poster
                    .decision(&format!("r{i}"), Duration::from_secs(10))
                    .await
                    .unwrap_or_else(|e| panic!("post r{i}: {e}"));
            }
        }
    };
    post_range(0, 20).await;
    wait_delivered(&[&leaver, &watcher], 20).await;
    let (last, epoch) = {
        let l = leaver.log();
        (l.last_seq(), l.epoch().unwrap_or_default())
    };
    let before = leaver.log().texts();
    leaver.abort();

    // Away for 30 comments (the buffer holds 50): nothing is lost.
    post_range(20, 50).await;
    wait_delivered(&[&watcher], 50).await;
    let back = CommentClient::connect(&format!(
        "{}?since={last}&epoch={epoch}",
        comments_url(&b, STREAM)
    ))
    .await
    .unwrap();
    post_range(50, 55).await;
    wait_delivered(&[&back, &watcher], 35).await;
    let mut resumed = before.clone();
    resumed.extend(back.log().texts());
    let want = watcher.log().texts();
    assert_eq!(want.len(), 55);
    assert_eq!(
        resumed, want,
        "resumed client's comments differ from a client that stayed"
    );
    assert!(back.log().gaps.is_empty());
    assert_eq!(
        back.log().welcome.as_ref().unwrap()["head"].as_u64(),
        Some(last)
    );

    // Away for longer than the buffer: told what is gone, then what is held.
    let (last, epoch) = {
        let l = back.log();
        (l.last_seq(), l.epoch().unwrap_or_default())
    };
    back.abort();
    post_range(55, 155).await;
    wait_delivered(&[&watcher], 155).await;
    let late = CommentClient::connect(&format!(
        "{}?since={last}&epoch={epoch}",
        comments_url(&b, STREAM)
    ))
    .await
    .unwrap();
    wait_delivered(&[&late], 50).await;
    let l = late.log();
    assert_eq!(l.gaps.len(), 1, "gaps {:?}", l.gaps);
    let (from, to) = l.gaps[0];
    assert_eq!(from, last + 1);
    assert_eq!(l.comments.len(), 50, "the buffer's 50 comments");
    assert_eq!(l.comments[0].seq, to + 1);
    let w = watcher.log();
    assert_eq!(l.texts(), w.texts()[105..].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_and_play_route_comment_clients() {
    let cl = cluster(false).await;
    // /v1/resolve lists each edge's comments URL.
    let v = eventually(Duration::from_secs(15), "the stream resolvable", || async {
        match cl
            .s
            .get(&format!(
                "/v1/resolve?stream={STREAM}&lat=50.11&lon=8.68&n=3"
            ))
            .await
        {
            (200, v) => Ok(v),
            other => Err(other),
        }
    })
    .await;
    let edges = v["edges"].as_array().cloned().unwrap_or_default();
    assert!(!edges.is_empty(), "{v}");
    for e in &edges {
        let url = e["comments_url"].as_str().unwrap_or("");
        let public = e["public_url"].as_str().unwrap_or("");
        assert_eq!(
            url,
            format!(
                "{}/{STREAM}/comments",
                public.replacen("http://", "ws://", 1)
            )
        );
    }
    // /play/.../comments redirects to the chosen edge's WebSocket, and a
    // client connects there.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .get(format!(
            "{}/play/{STREAM}/comments?lat=50.11&lon=8.68",
            cl.s.api_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 302);
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(
        location.starts_with("ws://127.0.0.1:")
            && location.contains(&format!("/{STREAM}/comments?")),
        "{location}"
    );
    let c = eventually(
        Duration::from_secs(20),
        "room behind the redirect",
        || async { CommentClient::connect(&location).await },
    )
    .await;
    assert!(c.log().welcome.is_some());
}
