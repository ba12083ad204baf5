//! The demo's live comments: a few synthetic viewers in the demo stream's
//! room on every agent (readers), and chatty ones among them that post a
//! line every few seconds with a poster token from the scheduler
//! (`POST /v1/comments/tokens`), so the watch page shows comments beside
//! and over the video and the dashboard shows comment rates. Reconnects
//! when a room is not there yet; stops when the token is cancelled.

use rand::Rng;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use vantage_tests::comments::CommentClient;

/// What the synthetic chatters say.
const LINES: [&str; 16] = [
    "hello from {city}!",
    "nice stream",
    "the colour bars look great today",
    "gg",
    "👋 hi everyone",
    "bonjour depuis {city}",
    "こんにちは",
    "is this live? it is live",
    "latency feels low from {city}",
    "first time here",
    "lol",
    "🎉🎉🎉",
    "olá de {city}",
    "that tone though",
    "watching on the LL-HLS player",
    "hallo aus {city}",
];

/// One agent's room: its comments URL, its city and the poster token of
/// its chatter.
#[derive(Debug, Clone)]
pub struct Room {
    pub url: String,
    pub city: String,
    pub token: Option<String>,
}

/// Keeps `readers` silent viewers and one chatter in each room, the
/// chatters posting every 2-6 s, until `stop`.
pub async fn run(rooms: Vec<Room>, readers: usize, stop: CancellationToken) {
    let mut set = JoinSet::new();
    for room in rooms {
        for _ in 0..readers {
            set.spawn(viewer(room.clone(), None, stop.clone()));
        }
        let token = room.token.clone();
        set.spawn(viewer(room, token, stop.clone()));
    }
    stop.cancelled().await;
    while set.join_next().await.is_some() {}
}

/// One viewer: connected while `stop` is not cancelled, reconnecting with
/// its last number; with a token, it also posts.
async fn viewer(room: Room, token: Option<String>, stop: CancellationToken) {
    let mut resume = String::from("backlog=20");
    let mut n = 0u64;
    while !stop.is_cancelled() {
        let url = format!("{}?{resume}", room.url);
        let client = tokio::select! {
            _ = stop.cancelled() => return,
            c = CommentClient::connect(&url) => c,
        };
        let Ok(client) = client else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
            }
        };
        if let Some(t) = &token {
            client.auth(t);
        }
        loop {
            let wait = {
                let mut rng = rand::rng();
                Duration::from_millis(rng.random_range(2000..6000))
            };
            tokio::select! {
                _ = stop.cancelled() => {
                    client.close().await;
                    return;
                }
                _ = tokio::time::sleep(wait) => {}
            }
            if client.ended() {
                break;
            }
            client.ping();
            if token.is_some() {
                let line = {
                    let mut rng = rand::rng();
                    LINES[rng.random_range(0..LINES.len())].replace("{city}", &room.city)
                };
                n += 1;
                client.post(&format!("demo-{n}"), &line);
            }
        }
        let l = client.log();
        if let Some(epoch) = l.epoch() {
            resume = format!("since={}&epoch={epoch}", l.last_seq());
        }
    }
}
