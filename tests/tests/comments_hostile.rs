//! Issue 20 (live comments), Must show 4, with the real binaries: hostile
//! clients of a room on edge B (a follower of origin A) — a flooding
//! poster, an oversized frame, invalid UTF-8, bad, foreign and expired
//! tokens, a fake downstream link, 10,000 connections that never complete
//! the upgrade, a client that never reads — are each refused or dropped
//! with a counter, while the room's other clients on B and A keep
//! receiving every comment once, in order, and B's memory stays bounded.
//! And the blocklist: replaced at the scheduler, in force at the edges at
//! once, normalised matching, the reason returned to the poster.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use vantage_shared::comment_token::{self, Claims, Key};
use vantage_tests::cluster::wait_all_up;
use vantage_tests::comments::{
    CommentClient, comments_url, connect_when_ready, poster_token, rss_kib, upgrade_request,
    wait_keys,
};
use vantage_tests::synth::SynthPublisher;
use vantage_tests::{Agent, Scheduler, eventually};

const STREAM: &str = "live/h";

struct Room {
    s: Scheduler,
    a: Agent,
    b: Agent,
    _publisher: SynthPublisher,
}

async fn room() -> Room {
    let s = Scheduler::builder().report_interval_ms(500).start().await;
    let flags = |b: vantage_tests::AgentBuilder| {
        b.arg("--comments-client-rate")
            .arg("100")
            .arg("--comments-client-burst")
            .arg("200")
            .arg("--comments-queue-bytes")
            .arg("65536")
            .arg("--comments-write-timeout-ms")
            .arg("3000")
    };
    let a = flags(
        Agent::builder("ch-a", &s)
            .region("eu-paris")
            .at(48.8566, 2.3522),
    )
    .start()
    .await;
    let b = flags(
        Agent::builder("ch-b", &s)
            .region("eu-frankfurt")
            .at(50.1109, 8.6821),
    )
    .start()
    .await;
    wait_all_up(&s, &["ch-a", "ch-b"], Duration::from_secs(15)).await;
    let media: SocketAddr = a.media_url().trim_start_matches("http://").parse().unwrap();
    let publisher = SynthPublisher::start(media, &format!("/{STREAM}.flv"), 300);
    wait_keys(&a, Duration::from_secs(15)).await;
    wait_keys(&b, Duration::from_secs(15)).await;
    Room {
        s,
        a,
        b,
        _publisher: publisher,
    }
}

/// `ws://…` of the room at `agent` with `query`.
fn url(agent: &Agent, query: &str) -> String {
    format!("{}?{query}", comments_url(agent, STREAM))
}

/// The media address of `agent`.
fn media(agent: &Agent) -> SocketAddr {
    agent
        .media_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

/// Waits for the server to close `c`; returns the close code.
async fn closed_with(c: &CommentClient) -> u16 {
    eventually(Duration::from_secs(10), "the server closes", || async {
        let l = c.log();
        match (&l.closed, l.ended) {
            (Some((code, _)), _) => Ok(*code),
            (None, true) => Ok(0),
            _ => Err(()),
        }
    })
    .await
}

async fn counter(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> f64 {
    agent.metric(name, labels).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_comment_clients_are_refused_or_dropped_and_the_room_goes_on() {
    let r = room().await;
    let token = poster_token(&r.s, "steady", None).await;
    // The room: 20 clients on B, 10 on A, and a steady poster on A.
    let mut good = Vec::new();
    good.push(connect_when_ready(&r.b, STREAM, "backlog=0").await);
    for _ in 1..20 {
        good.push(
            CommentClient::connect(&url(&r.b, "backlog=0"))
                .await
                .unwrap(),
        );
    }
    for _ in 0..10 {
        good.push(connect_when_ready(&r.a, STREAM, "backlog=0").await);
    }
    let steady = connect_when_ready(&r.a, STREAM, "backlog=0").await;
    assert_eq!(steady.auth_wait(&token).await["ok"], true);
    let mut steady_n = 0usize;
    let mut post_steady = |n: usize| {
        let ids: Vec<String> = (steady_n..steady_n + n).map(|i| format!("s{i}")).collect();
        for id in &ids {
            steady.post(id, &format!("steady {id}"));
        }
        steady_n += n;
        ids
    };
    let mut steady_ids = post_steady(10);

    // --- 1. A flooding poster: refused with rate_client, then disconnected (1008).
    let flooder = CommentClient::connect(&url(&r.b, "backlog=0"))
        .await
        .unwrap();
    assert_eq!(flooder.auth_wait(&token).await["ok"], true);
    let flood_started = Instant::now();
    for i in 0..1000 {
        flooder.post(&format!("f{i}"), &format!("flood {i}"));
    }
    assert_eq!(
        closed_with(&flooder).await,
        1008,
        "{:?}",
        flooder.log().closed
    );
    // Its bucket: the burst (200), refilled at 100/s while it was connected.
    let flood_allowed = 200 + (100.0 * flood_started.elapsed().as_secs_f64()).ceil() as usize;
    let flood_nacked = flooder.log().nacks.len();
    eprintln!("flooder: {flood_nacked} refused before the close");
    assert!(
        flood_nacked > 20,
        "refusals before the close: {flood_nacked}"
    );
    assert!(flooder.log().nacks.iter().all(|(_, r)| r == "rate_client"));
    assert!(
        counter(
            &r.b,
            "vantage_agent_comments_rejected_total",
            &[("reason", "rate_client")]
        )
        .await
            >= 20.0
    );
    assert_eq!(
        counter(
            &r.b,
            "vantage_agent_comments_closed_total",
            &[("reason", "flood")]
        )
        .await,
        1.0
    );

    // --- 2. An oversized frame: 1009.
    let big = CommentClient::connect(&url(&r.b, "backlog=0"))
        .await
        .unwrap();
    big.send(Message::text("x".repeat(100_000)));
    assert_eq!(closed_with(&big).await, 1009);
    assert_eq!(
        counter(
            &r.b,
            "vantage_agent_comments_closed_total",
            &[("reason", "oversized")]
        )
        .await,
        1.0
    );

    // --- 3. Invalid UTF-8 in a text frame: 1007.
    let bad = CommentClient::connect(&url(&r.b, "backlog=0"))
        .await
        .unwrap();
    bad.send(Message::Frame(Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        OpCode::Data(Data::Text),
        true,
    )));
    assert_eq!(closed_with(&bad).await, 1007);
    assert_eq!(
        counter(
            &r.b,
            "vantage_agent_comments_closed_total",
            &[("reason", "invalid_utf8")]
        )
        .await,
        1.0
    );

    // --- 4. Tokens: garbage, another key, expired; posting without one.
    let t = CommentClient::connect(&url(&r.b, "backlog=0"))
        .await
        .unwrap();
    assert_eq!(t.auth_wait("not.a.token").await["r"], "bad_token");
    let stranger = Key {
        kid: "k-stranger".into(),
        secret: vec![7; 32],
    };
    let now = (vantage_tests::clock_ms() / 1000) as i64;
    let foreign = comment_token::sign(
        &stranger,
        &Claims {
            sub: "mallory".into(),
            exp: now + 600,
            ..Default::default()
        },
    );
    assert_eq!(t.auth_wait(&foreign).await["r"], "bad_token");
    // The cluster's own key (as stored by the agent), an expired token.
    let stored = std::fs::read(r.b.data_dir().join("comments.pb")).unwrap();
    let settings =
        <vantage_proto::v1::CommentSettings as prost::Message>::decode(&stored[..]).unwrap();
    let k = &settings.keys[0];
    let real = Key {
        kid: k.kid.clone(),
        secret: k.key.clone(),
    };
    let expired = comment_token::sign(
        &real,
        &Claims {
            sub: "late".into(),
            exp: now - 3600,
            ..Default::default()
        },
    );
    assert_eq!(t.auth_wait(&expired).await["r"], "expired_token");
    let wrong_room = comment_token::sign(
        &real,
        &Claims {
            sub: "elsewhere".into(),
            exp: now + 600,
            room: Some("vod/*".into()),
            ..Default::default()
        },
    );
    assert_eq!(t.auth_wait(&wrong_room).await["r"], "wrong_room");
    t.post("nope", "unauthenticated post");
    assert_eq!(
        t.decision("nope", Duration::from_secs(5)).await,
        Err("unauthenticated".to_owned())
    );
    assert!(!t.ended(), "a refused token leaves the reader connected");
    for reason in [
        "bad_token",
        "expired_token",
        "wrong_room",
        "unauthenticated",
    ] {
        assert!(
            counter(
                &r.b,
                "vantage_agent_comments_rejected_total",
                &[("reason", reason)]
            )
            .await
                >= 1.0,
            "{reason}"
        );
    }
    // A stranger posing as a downstream agent's link: no link token, or a
    // poster token, is refused before the upgrade.
    let fake_link = CommentClient::connect(&url(&r.b, "link=ch-x")).await;
    assert!(fake_link.is_err(), "a link without a token was accepted");
    let req = {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = url(&r.b, "link=steady").into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    };
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    assert!(
        counter(
            &r.b,
            "vantage_agent_comments_refused_total",
            &[("reason", "link_auth")]
        )
        .await
            >= 2.0
    );
    steady_ids.extend(post_steady(10));

    // --- 5. 10,000 connections that never complete the upgrade: a request
    // head that never ends. hyper's header timeout (10 s) drops them, and
    // beyond `relay-max-pending` (4096) waiting heads new ones are closed
    // at accept; each is counted either way.
    let rss_before = rss_kib(r.b.pid().unwrap());
    let counted = || async {
        counter(&r.b, "vantage_agent_relay_header_timeouts_total", &[]).await
            + counter(&r.b, "vantage_agent_relay_pending_refused_total", &[]).await
    };
    let counted_before = counted().await;
    let head = "GET /live/h/comments HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n";
    let mut stuck = Vec::with_capacity(10_000);
    let addr = media(&r.b);
    for chunk in 0..20 {
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..500 {
            set.spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                // A connection closed at accept may refuse the write.
                let _ = s.write_all(head.as_bytes()).await;
                Some(s)
            });
        }
        while let Some(s) = set.join_next().await {
            if let Some(s) = s.unwrap() {
                stuck.push(s);
            }
        }
        if chunk % 5 == 4 {
            steady_ids.extend(post_steady(5));
        }
    }
    assert_eq!(stuck.len(), 10_000, "connections opened");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_held = rss_kib(r.b.pid().unwrap());
    eprintln!(
        "B's RSS: {rss_before} KiB before, {rss_held} KiB with 10,000 unfinished upgrades \
         (+{} KiB); refused at accept: {}",
        rss_held.saturating_sub(rss_before),
        counter(&r.b, "vantage_agent_relay_pending_refused_total", &[]).await
    );
    // The room goes on meanwhile.
    steady_ids.extend(post_steady(10));
    assert!(
        rss_held.saturating_sub(rss_before) < 100 * 1024,
        "B's memory grew by {} KiB for 10,000 unfinished upgrades",
        rss_held.saturating_sub(rss_before)
    );
    eventually(
        Duration::from_secs(30),
        "10,000 refusals and header timeouts",
        || async {
            let n = counted().await - counted_before;
            if n >= 10_000.0 { Ok(n) } else { Err(n) }
        },
    )
    .await;
    let mut closed = 0;
    for s in &mut stuck {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(5), s.read(&mut b)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 10_000, "connections closed by the agent");
    drop(stuck);

    // --- 6. A client that never reads: a 4 KiB receive buffer, the
    // upgrade read, then nothing. Long comments pile up until its queue
    // bound: dropped as a slow reader, nobody else waits for it.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut lazy = sock.connect(addr).await.unwrap();
    lazy.write_all(upgrade_request(&format!("/{STREAM}/comments?backlog=0")).as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        lazy.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let long = "y".repeat(490);
    let slow_before = counter(
        &r.b,
        "vantage_agent_comments_closed_total",
        &[("reason", "slow_reader")],
    )
    .await;
    let mut long_ids = Vec::new();
    for i in 0..400 {
        let id = format!("l{i}");
        steady.post(&id, &format!("{long}{i}"));
        long_ids.push(id);
        if i % 40 == 39 {
            tokio::time::sleep(Duration::from_millis(450)).await;
        }
    }
    eventually(
        Duration::from_secs(20),
        "the lazy reader dropped",
        || async {
            let n = counter(
                &r.b,
                "vantage_agent_comments_closed_total",
                &[("reason", "slow_reader")],
            )
            .await;
            if n > slow_before { Ok(n) } else { Err(n) }
        },
    )
    .await;
    drop(lazy);

    // --- The room: every client has every accepted comment, once, in order.
    let mut want_ids: Vec<String> = steady_ids.clone();
    want_ids.extend(long_ids.iter().cloned());
    for id in &want_ids {
        steady
            .decision(id, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("steady post {id}: {e}"));
    }
    let started = Instant::now();
    while good.iter().any(|c| c.log().comments.len() < want_ids.len())
        && started.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reference = good[0].log().texts();
    // The flooder's first posts (its burst) were accepted before it was
    // cut off: they are part of the room like any others.
    let flood_in_room = reference.iter().filter(|t| t.starts_with("flood ")).count();
    assert!(
        flood_in_room <= flood_allowed,
        "{flood_in_room} flood comments in the room (at most {flood_allowed}: burst and refill)"
    );
    assert_eq!(
        reference.len(),
        want_ids.len() + flood_in_room,
        "room client 0 got {} comments",
        reference.len()
    );
    for id in &want_ids {
        let text_end = if id.starts_with('s') {
            format!("steady {id}")
        } else {
            format!("{long}{}", &id[1..])
        };
        assert!(reference.contains(&text_end), "{id} missing in the room");
    }
    for (i, c) in good.iter().enumerate() {
        let l = c.log();
        assert!(!l.ended, "room client {i} was disconnected: {:?}", l.closed);
        assert_eq!(l.texts(), reference, "room client {i}");
    }
    let rss_end = rss_kib(r.b.pid().unwrap());
    eprintln!("B's RSS at the end: {rss_end} KiB");
    let _ = &r.a;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocklist_from_the_scheduler_applies_at_the_edges_at_once() {
    let r = room().await;
    let token = poster_token(&r.s, "poster", None).await;
    let on_b = connect_when_ready(&r.b, STREAM, "backlog=0").await;
    assert_eq!(on_b.auth_wait(&token).await["ok"], true);
    on_b.post("before", "a forbidden word, not yet blocked");
    assert!(
        on_b.decision("before", Duration::from_secs(10))
            .await
            .is_ok()
    );

    let (status, v) =
        r.s.put(
            "/v1/comments/blocklist",
            &serde_json::json!({"patterns": ["*forbidden*", "bad word"]}),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    for x in [&r.a, &r.b] {
        eventually(Duration::from_secs(5), "blocklist at the agent", || async {
            let st = x.status().await;
            match st["comments"]["blocklist_patterns"].as_u64() {
                Some(2) => Ok(()),
                _ => Err(st["comments"].clone()),
            }
        })
        .await;
    }
    // Width, case, look-alikes and separators do not get through.
    for (id, text) in [
        ("b1", "FORBIDDEN"),
        ("b2", "ｆｏｒｂｉｄｄｅｎ fruit"),
        ("b3", "f.o.r.b.i.d.d.e.n"),
        ("b4", "fоrbіdden"), // Cyrillic о and і
        ("b5", "a BAD  W0RD"),
    ] {
        on_b.post(id, text);
        assert_eq!(
            on_b.decision(id, Duration::from_secs(10)).await,
            Err("blocked".to_owned()),
            "{text}"
        );
    }
    on_b.post("ok", "a badwording is fine");
    assert!(on_b.decision("ok", Duration::from_secs(10)).await.is_ok());
    assert_eq!(
        r.b.metric(
            "vantage_agent_comments_rejected_total",
            &[("reason", "blocked")]
        )
        .await,
        5.0
    );
    // Only the allowed comments reached the room, at either agent.
    for x in [&r.b, &r.a] {
        let watcher = CommentClient::connect(&url(x, "backlog=10")).await.unwrap();
        eventually(Duration::from_secs(5), "the backlog", || async {
            let texts = watcher.log().texts();
            if texts == ["a forbidden word, not yet blocked", "a badwording is fine"] {
                Ok(())
            } else {
                Err(texts)
            }
        })
        .await;
    }
    // The blocklist's state is the scheduler's, for operators.
    let (status, v) = r.s.get("/v1/comments/blocklist").await;
    assert_eq!(status, 200);
    assert_eq!(v["patterns"].as_array().map(Vec::len), Some(2), "{v}");
}
