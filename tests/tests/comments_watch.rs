//! Issue 20 (live comments), Must show 5: a real headless Chromium opens the
//! watch page `/watch/live/w` on edge B (B follows origin A, where the
//! synthetic stream is published) and shows, in its comment list beside
//! the video, a comment posted from another client (a WebSocket client on
//! A) within 1 s of the post; the time from the post to the page's list is
//! measured with the page's own clock (the same machine's) and printed.
//! Then the page posts, as a viewer with a poster token in its URL
//! fragment would (typing into the box, clicking Send), and the other
//! client receives it.
//!
//! Chromium comes from Debian (scripts/test.sh installs it); when missing
//! the test prints `SKIPPED ...` and passes, except under `CI=true`.

use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use vantage_tests::browser::{self, Browser};
use vantage_tests::cluster::wait_all_up;
use vantage_tests::comments::{connect_when_ready, poster_token, wait_keys};
use vantage_tests::synth::SynthPublisher;
use vantage_tests::{Agent, Scheduler, clock_ms, eventually};

const STREAM: &str = "live/w";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_watch_page_shows_a_comment_from_another_client_within_a_second() {
    let Some(chromium) = browser::chromium("chromium_watch_page_shows_comments") else {
        return;
    };
    let s = Scheduler::builder().report_interval_ms(500).start().await;
    let a = Agent::builder("cw-a", &s)
        .region("eu-paris")
        .at(48.8566, 2.3522)
        .start()
        .await;
    let b = Agent::builder("cw-b", &s)
        .region("eu-frankfurt")
        .at(50.1109, 8.6821)
        .start()
        .await;
    wait_all_up(&s, &["cw-a", "cw-b"], Duration::from_secs(15)).await;
    let media: SocketAddr = a
        .media_url()
        .trim_start_matches("http://")
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let _publisher = SynthPublisher::start(media, &format!("/{STREAM}.flv"), 300);
    wait_keys(&a, Duration::from_secs(15)).await;
    wait_keys(&b, Duration::from_secs(15)).await;
    // The other client, on A; B's room must be reachable before the page
    // opens (its route to the stream).
    let other = connect_when_ready(&a, STREAM, "backlog=0").await;
    let probe = connect_when_ready(&b, STREAM, "backlog=0").await;
    drop(probe);
    let other_token = poster_token(&s, "other", None).await;
    assert_eq!(other.auth_wait(&other_token).await["ok"], true);
    let page_token = poster_token(&s, "chromium", Some(STREAM)).await;

    let mut browser = Browser::launch(&chromium, 1280, 720)
        .await
        .unwrap_or_else(|e| panic!("chromium: {e}"));
    let url = format!("{}/watch/{STREAM}#token={page_token}", b.media_url());
    browser
        .goto(&url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"));
    browser
        .wait_for(
            "window.vantage && window.vantage.comments.connected && window.vantage.comments.user",
            Duration::from_secs(20),
        )
        .await
        .unwrap_or_else(|e| panic!("the page never joined the room as a poster: {e}"));

    // A comment from the other client shows in the page's list.
    let text = format!("hello from A {}", clock_ms());
    let posted_ms = clock_ms();
    other.post("o1", &text);
    let sel = serde_json::to_string(&text).unwrap_or_default();
    let shown = browser
        .wait_for(
            &format!(
                "(() => {{ const c = window.vantage.comments.received.find(r => r.text === {sel}); \
                 const li = Array.from(document.querySelectorAll('#chat li')).some(l => l.textContent.includes({sel})); \
                 return c && li ? c.shown_at : null; }})()"
            ),
            Duration::from_secs(5),
        )
        .await
        .unwrap_or_else(|e| panic!("the page never showed {text:?}: {e}"));
    let shown_ms = shown.as_u64().unwrap_or(u64::MAX);
    let latency = shown_ms.saturating_sub(posted_ms);
    eprintln!("MEASURED post on A -> shown by Chromium on B: {latency} ms");
    assert!(
        latency <= 1000,
        "the comment showed {latency} ms after the post (Must show: within 1 s)"
    );
    // It also flew over the picture.
    let flying = browser
        .eval(&format!(
            "Array.from(document.querySelectorAll('#overlay .fly')).some(d => d.textContent === {sel})"
        ))
        .await
        .unwrap_or(Value::Null);
    assert_eq!(flying, Value::Bool(true), "no danmaku over the video");

    // The page posts like a viewer: type, click Send.
    browser
        .fill("#post-text", "hello from chromium")
        .await
        .unwrap_or_else(|e| panic!("fill: {e}"));
    browser
        .click("#post-send")
        .await
        .unwrap_or_else(|e| panic!("click: {e}"));
    eventually(
        Duration::from_secs(5),
        "the page's comment at A",
        || async {
            let l = other.log();
            match l.comments.iter().find(|c| c.text == "hello from chromium") {
                Some(c) => Ok(c.user.clone()),
                None => Err(l.texts()),
            }
        },
    )
    .await;
    // The decision comes back to the page from A through B: it may reach
    // the page after the comment reached A's client.
    let asked = Instant::now();
    let acks = loop {
        let acks = browser
            .eval("Object.keys(window.vantage.comments.acks).length")
            .await
            .unwrap_or(Value::Null);
        if acks.as_u64() == Some(1) || asked.elapsed() > Duration::from_secs(5) {
            break acks;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        acks.as_u64(),
        Some(1),
        "the page's post was not acknowledged within 5 s"
    );
    let errors = browser
        .eval("window.vantage.comments.errors")
        .await
        .unwrap_or(Value::Null);
    assert_eq!(errors, serde_json::json!([]));
    browser.close().await;
}
