//! The dashboard in a real (headless) Chromium, against a real scheduler
//! and agents at four cities with the synthetic stream published at one:
//! the map shows every node where its coordinates say, the table has a row
//! per node, a click shows that node's route table, the live comment rates
//! of the nodes (the demo's chatters) show in the table and the summary, a
//! screenshot is a real picture, and editing a weight in the page changes
//! `GET /v1/weights`.
//!
//! `VANTAGE_UPDATE_SCREENSHOTS=1` also writes the screenshot to
//! `docs/img/dashboard.png`.

#[path = "../src/bin/vantage-demo/traffic.rs"]
#[allow(dead_code)]
mod traffic;

#[path = "../src/bin/vantage-demo/chat.rs"]
mod chat;

use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use vantage_tests::browser::{self, Browser, png_size};
use vantage_tests::cluster::{first_upstream, wait_all_up};
use vantage_tests::http::Http;
use vantage_tests::{Agent, Scheduler, eventually};

const CITIES: [(&str, f64, f64); 4] = [
    ("paris", 48.85341, 2.3488),
    ("new-york", 40.71427, -74.00597),
    ("tokyo", 35.6895, 139.69171),
    ("sydney", -33.86785, 151.20732),
];

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_every_node_and_edits_weights() {
    let test = "dashboard_shows_every_node_and_edits_weights";
    let Some(chromium) = browser::chromium(test) else {
        return;
    };
    let sched = Scheduler::builder().report_interval_ms(250).start().await;
    let mut agents = Vec::new();
    for (id, lat, lon) in CITIES {
        agents.push(Agent::builder(id, &sched).at(lat, lon).start().await);
    }
    let ids: Vec<&str> = CITIES.iter().map(|c| c.0).collect();
    wait_all_up(&sched, &ids, WAIT).await;

    // A stream published at paris, so route tables have something to show.
    let stop = CancellationToken::new();
    let publisher = tokio::spawn(traffic::publish(
        vantage_tests::ports::loopback(agents[0].ports().rtmp),
        stop.clone(),
    ));
    eventually(WAIT, "tokyo routed to paris for live/demo", || async {
        let r = sched.routes("tokyo").await.unwrap_or_default();
        match first_upstream(&r, "live/demo") {
            Some(u) if u == "paris" => Ok(()),
            _ => Err(r),
        }
    })
    .await;

    // A few synthetic viewers with CMCD, so the table has QoE figures.
    let edges = agents
        .iter()
        .zip(CITIES)
        .map(|(a, (_, lat, lon))| traffic::Edge {
            media_url: a.media_url(),
            lat,
            lon,
        })
        .collect();
    let viewers = tokio::spawn(traffic::viewers(edges, 4, stop.clone()));
    // The demo's comment chatters in the stream's room at two agents.
    let mut rooms = Vec::new();
    for a in [&agents[0], &agents[2]] {
        let token =
            vantage_tests::comments::poster_token(&sched, &format!("{}-chat", a.node_id()), None)
                .await;
        rooms.push(chat::Room {
            url: vantage_tests::comments::comments_url(a, "live/demo"),
            city: a.node_id().to_owned(),
            token: Some(token),
        });
    }
    let chatters = tokio::spawn(chat::run(rooms, 3, stop.clone()));
    let state_url = format!("{}/ui/state", sched.api_url());
    let http = Http::new();
    eventually(WAIT, "CMCD buffer figures in /ui/state", || async {
        let (_, v) = http.get(&state_url).await;
        let cmcd = v["nodes"]
            .as_array()
            .is_some_and(|ns| ns.iter().any(|n| n["qoe"]["buffer_source"] == "cmcd"));
        if cmcd { Ok(()) } else { Err(v) }
    })
    .await;

    // The page and its assets come from the scheduler itself.
    let api = sched.api_url();
    let (code, html) = http.get_text(&format!("{api}/")).await;
    assert_eq!(code, 200);
    assert!(html.contains("<svg id=\"map\"") && html.contains("/ui/app.js"));
    let (code, svg) = http.get_text(&format!("{api}/ui/world.svg")).await;
    assert_eq!(code, 200);
    assert!(svg.contains("Natural Earth"), "basemap with attribution");

    let mut b = Browser::launch(&chromium, 1400, 1300)
        .await
        .unwrap_or_else(|e| panic!("launching chromium: {e}"));
    b.goto(&format!("{api}/")).await.unwrap();

    // Every node is a marker on the map and a row in the table.
    let n = CITIES.len();
    b.wait_for(
        &format!(
            "document.querySelectorAll('#markers .node-marker').length === {n} && \
             document.querySelectorAll('#nodes tbody tr.node-row').length === {n} && \
             [...document.querySelectorAll('#nodes tbody .badge')].every(e => e.textContent === 'up')"
        ),
        WAIT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let markers = b
        .eval(
            "[...document.querySelectorAll('#markers .node-marker')].map(g => { \
               const c = g.querySelector('circle'); \
               return {id: g.dataset.id, cx: +c.getAttribute('cx'), cy: +c.getAttribute('cy'), \
                       fill: c.getAttribute('fill'), label: g.querySelector('text').textContent}; })",
        )
        .await
        .unwrap();
    let markers = markers.as_array().cloned().unwrap_or_default();
    assert_eq!(markers.len(), n, "{markers:?}");
    for (id, lat, lon) in CITIES {
        let m = markers
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("no marker for {id}: {markers:?}"));
        // Equirectangular: x = lon + 180, y = 90 - lat (as the basemap).
        let (cx, cy) = (m["cx"].as_f64().unwrap(), m["cy"].as_f64().unwrap());
        assert!((cx - (lon + 180.0)).abs() < 0.01, "{id}: {m}");
        assert!((cy - (90.0 - lat)).abs() < 0.01, "{id}: {m}");
        assert_eq!(m["label"], id);
        assert!(
            m["fill"].as_str().is_some_and(|f| f.starts_with("rgb(")),
            "coloured by score: {m}"
        );
    }
    let rows = b
        .eval("[...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.id).sort()")
        .await
        .unwrap();
    let mut want: Vec<&str> = ids.clone();
    want.sort_unstable();
    assert_eq!(rows, serde_json::json!(want));
    // The basemap really loaded (not a broken image).
    let basemap = b
        .eval(
            "new Promise(ok => { const i = new Image(); i.onload = () => ok(i.naturalWidth); \
             i.onerror = () => ok(0); i.src = '/ui/world.svg'; })",
        )
        .await
        .unwrap();
    assert!(basemap.as_f64().unwrap_or(0.0) > 0.0, "basemap: {basemap}");

    // Comment rates: per node in the table, and in the summary.
    let comments = b
        .wait_for(
            "window.vantage.comments && window.vantage.comments.connections >= 8 && \
             window.vantage.comments.posts_per_s > 0 && window.vantage.comments.fanout_per_s > 0 && \
             document.querySelector(\"#nodes tbody tr[data-id='paris'] td.comments\").textContent",
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("comment rates never showed: {e}"));
    // Paris holds its 4 clients and tokyo's upstream link (paris is the
    // stream's origin).
    let cell = comments.as_str().unwrap_or_default().to_owned();
    let conns: u64 = cell
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert_eq!(conns, 5, "paris: comment connections in {cell:?}");
    let summary = b
        .eval("document.querySelector('#summary').textContent")
        .await
        .unwrap();
    assert!(
        summary
            .as_str()
            .is_some_and(|s| s.contains("comments: 9 connected")),
        "{summary}"
    );

    // A click on a row shows that node's route table.
    b.click("#nodes tbody tr[data-id='tokyo']").await.unwrap();
    let routes = b
        .wait_for(
            "document.querySelector('#routes-node').textContent.includes('tokyo') && \
             document.querySelector('#route-streams') && \
             document.querySelector('#route-streams tbody').textContent",
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let routes = routes.as_str().unwrap_or_default();
    assert!(
        routes.contains("live/demo") && routes.contains("paris"),
        "{routes}"
    );

    // The screenshot is a real picture of the whole page.
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let png = b.screenshot(&out).await.unwrap();
    let (w, h) = png_size(&png).unwrap_or_else(|| panic!("not a PNG: {}", out.display()));
    assert_eq!(w, 1400);
    assert!(h >= 900, "{w}x{h}");
    assert!(
        png.len() > 50_000,
        "a blank page compresses to far less: {}",
        png.len()
    );
    if std::env::var("VANTAGE_UPDATE_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/img/dashboard.png");
        std::fs::create_dir_all(docs.parent().unwrap()).unwrap();
        std::fs::write(&docs, &png).unwrap();
    }

    // Editing a weight in the page changes GET /v1/weights.
    let before = sched.weights().await;
    let version = before["version"].as_u64().unwrap();
    b.fill("#w-latency", "0.6").await.unwrap();
    b.fill("#w-comment", "from the dashboard test")
        .await
        .unwrap();
    b.click("#save-weights").await.unwrap();
    b.wait_for(
        "document.querySelector('#weights-status').textContent.startsWith('saved')",
        WAIT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let after = sched.weights().await;
    assert_eq!(after["version"].as_u64(), Some(version + 1), "{after}");
    assert_eq!(after["weights"]["latency"].as_f64(), Some(0.6), "{after}");
    assert_eq!(after["comment"], "from the dashboard test");
    for k in ["loss", "buffer", "load", "distance"] {
        assert_eq!(after["weights"][k], before["weights"][k], "{k} unchanged");
    }
    // The page shows the new version once it refreshes.
    b.wait_for(
        &format!(
            "document.querySelector('#weights-version').textContent.includes('v{}')",
            version + 1
        ),
        WAIT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let shown: Value = b
        .eval("document.querySelector('#w-latency').value")
        .await
        .unwrap();
    assert_eq!(shown, "0.6");

    b.close().await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), publisher).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), viewers).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), chatters).await;
}
