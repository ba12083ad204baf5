//! Live comment clients for end-to-end tests: a WebSocket client
//! (tokio-tungstenite) that records everything an agent sends it — the
//! welcome, every comment with its arrival time, decisions on its posts,
//! gaps, resets, the close code — and posts, authenticates and pings; and
//! poster tokens from the scheduler's API.

use crate::{Agent, Scheduler};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// One comment as a client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub seq: u64,
    pub ts_ms: i64,
    pub user: String,
    pub text: String,
    pub at: Instant,
}

/// Everything a client received.
#[derive(Debug, Default)]
pub struct Log {
    pub welcome: Option<Value>,
    pub welcomes: u32,
    pub comments: Vec<Seen>,
    /// Client post id → sequence number.
    pub acks: Vec<(String, u64)>,
    /// Client post id → reason code.
    pub nacks: Vec<(String, String)>,
    pub auth: Vec<Value>,
    pub gaps: Vec<(u64, u64)>,
    pub resets: Vec<Value>,
    pub pongs: u32,
    /// Close code and reason the server sent, if it closed.
    pub closed: Option<(u16, String)>,
    /// The connection ended (closed or failed).
    pub ended: bool,
    pub error: Option<String>,
}

impl Log {
    pub fn seqs(&self) -> Vec<u64> {
        self.comments.iter().map(|c| c.seq).collect()
    }

    pub fn texts(&self) -> Vec<String> {
        self.comments.iter().map(|c| c.text.clone()).collect()
    }

    pub fn epoch(&self) -> Option<String> {
        self.welcome
            .as_ref()
            .and_then(|w| w["epoch"].as_str())
            .map(str::to_owned)
    }

    pub fn last_seq(&self) -> u64 {
        self.comments.last().map_or_else(
            || {
                self.welcome
                    .as_ref()
                    .and_then(|w| w["head"].as_u64())
                    .unwrap_or(0)
            },
            |c| c.seq,
        )
    }

    pub fn ack(&self, id: &str) -> Option<u64> {
        self.acks.iter().find(|(i, _)| i == id).map(|(_, s)| *s)
    }

    pub fn nack(&self, id: &str) -> Option<&str> {
        self.nacks
            .iter()
            .find(|(i, _)| i == id)
            .map(|(_, r)| r.as_str())
    }
}

/// A connected comment client; dropping it closes the connection.
#[derive(Debug)]
pub struct CommentClient {
    log: Arc<Mutex<Log>>,
    tx: mpsc::UnboundedSender<Message>,
    task: JoinHandle<()>,
}

/// `ws://127.0.0.1:<media>/{stream}/comments`.
pub fn comments_url(agent: &Agent, stream: &str) -> String {
    format!(
        "{}/{stream}/comments",
        agent.media_url().replacen("http://", "ws://", 1)
    )
}

impl CommentClient {
    /// Connects to `url` (query included) and waits for the welcome.
    pub async fn connect(url: &str) -> Result<CommentClient, String> {
        let req = url
            .into_client_request()
            .map_err(|e| format!("{url}: {e}"))?;
        let (ws, _) = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .map_err(|_| format!("{url}: no upgrade within 10 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
        let log = Arc::new(Mutex::new(Log::default()));
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(pump(ws, rx, log.clone()));
        let c = CommentClient { log, tx, task };
        let started = Instant::now();
        while c.log().welcome.is_none() {
            if c.log().ended || started.elapsed() > Duration::from_secs(10) {
                return Err(format!("{url}: no welcome ({:?})", c.log()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(c)
    }

    pub fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends a raw message.
    pub fn send(&self, m: Message) {
        let _ = self.tx.send(m);
    }

    pub fn send_json(&self, v: &Value) {
        self.send(Message::text(v.to_string()));
    }

    pub fn auth(&self, token: &str) {
        self.send_json(&json!({"t": "auth", "token": token}));
    }

    pub fn post(&self, id: &str, text: &str) {
        self.send_json(&json!({"t": "post", "id": id, "text": text}));
    }

    pub fn ping(&self) {
        self.send_json(&json!({"t": "ping"}));
    }

    /// Authenticates with `token` and waits for the answer.
    pub async fn auth_wait(&self, token: &str) -> Value {
        let n = self.log().auth.len();
        self.auth(token);
        let started = Instant::now();
        loop {
            if let Some(a) = self.log().auth.get(n) {
                return a.clone();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no auth answer within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The decision on post `id`: `Ok(seq)` or `Err(reason)`, waiting up to
    /// `timeout`.
    pub async fn decision(&self, id: &str, timeout: Duration) -> Result<u64, String> {
        let started = Instant::now();
        loop {
            {
                let l = self.log();
                if let Some(s) = l.ack(id) {
                    return Ok(s);
                }
                if let Some(r) = l.nack(id) {
                    return Err(r.to_owned());
                }
                if l.ended {
                    return Err(format!("connection ended: {:?}", l.closed));
                }
            }
            if started.elapsed() > timeout {
                return Err(format!("no decision on {id} within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Closes the connection (close frame) and waits for the end.
    pub async fn close(self) {
        let _ = self.tx.send(Message::Close(None));
        let started = Instant::now();
        while !self.task.is_finished() && started.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Drops the connection without a close frame.
    pub fn abort(self) {
        self.task.abort();
    }

    pub fn ended(&self) -> bool {
        self.log().ended
    }
}

impl Drop for CommentClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn pump(mut ws: Ws, mut rx: mpsc::UnboundedReceiver<Message>, log: Arc<Mutex<Log>>) {
    let lock = || log.lock().unwrap_or_else(|p| p.into_inner());
    let mut write_failed = false;
    loop {
        tokio::select! {
            out = rx.recv(), if !write_failed => match out {
                Some(m) => {
                    // A failed write (the server closed) leaves what it
                    // sent before, the close frame included, to be read.
                    if let Err(e) = ws.send(m).await {
                        lock().error.get_or_insert(e.to_string());
                        write_failed = true;
                    }
                }
                None => return,
            },
            msg = ws.next() => {
                let at = Instant::now();
                match msg {
                    Some(Ok(Message::Text(t))) => record(&mut lock(), t.as_str(), at),
                    Some(Ok(Message::Close(c))) => {
                        let mut l = lock();
                        l.closed = Some(c.map_or((1005, String::new()), |f| {
                            (u16::from(f.code), f.reason.to_string())
                        }));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let mut l = lock();
                        l.error.get_or_insert(e.to_string());
                        l.ended = true;
                        return;
                    }
                    None => {
                        lock().ended = true;
                        return;
                    }
                }
            }
        }
    }
}

fn record(l: &mut Log, text: &str, at: Instant) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        l.error.get_or_insert(format!("not JSON: {text}"));
        return;
    };
    match v["t"].as_str() {
        Some("welcome") => {
            l.welcome = Some(v);
            l.welcomes += 1;
        }
        Some("c") => {
            for c in v["c"].as_array().into_iter().flatten() {
                l.comments.push(Seen {
                    seq: c["s"].as_u64().unwrap_or(0),
                    ts_ms: c["ts"].as_i64().unwrap_or(0),
                    user: c["u"].as_str().unwrap_or("").to_owned(),
                    text: c["x"].as_str().unwrap_or("").to_owned(),
                    at,
                });
            }
        }
        Some("ack") => l.acks.push((
            v["id"].as_str().unwrap_or("").to_owned(),
            v["s"].as_u64().unwrap_or(0),
        )),
        Some("nack") => l.nacks.push((
            v["id"].as_str().unwrap_or("").to_owned(),
            v["r"].as_str().unwrap_or("").to_owned(),
        )),
        Some("auth") => l.auth.push(v),
        Some("gap") => l.gaps.push((
            v["from"].as_u64().unwrap_or(0),
            v["to"].as_u64().unwrap_or(0),
        )),
        Some("reset") => l.resets.push(v),
        Some("pong") => l.pongs += 1,
        _ => {
            l.error.get_or_insert(format!("unexpected message: {text}"));
        }
    }
}

/// A poster token for `sub` from the scheduler (`POST /v1/comments/tokens`;
/// the test scheduler runs with `--dev`, no admin token needed).
pub async fn poster_token(s: &Scheduler, sub: &str, room: Option<&str>) -> String {
    let mut body = json!({"sub": sub, "ttl_s": 3600});
    if let Some(r) = room {
        body["room"] = json!(r);
    }
    let (status, v) = s
        .http()
        .post_json(&format!("{}/v1/comments/tokens", s.api_url()), &body)
        .await;
    assert_eq!(status, 200, "POST /v1/comments/tokens: {v}");
    v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {v}"))
        .to_owned()
}

/// Waits until `agent` holds comment keys from the scheduler.
pub async fn wait_keys(agent: &Agent, timeout: Duration) {
    crate::eventually(
        timeout,
        &format!("{} has comment keys", agent.node_id()),
        || async {
            let st = agent.status().await;
            match st["comments"]["keys"].as_u64() {
                Some(n) if n > 0 => Ok(()),
                _ => Err(st["comments"].clone()),
            }
        },
    )
    .await
}

/// Connects to room `stream` on `agent` once its route to the stream is
/// known (404 until then), with `query` appended.
pub async fn connect_when_ready(agent: &Agent, stream: &str, query: &str) -> CommentClient {
    let url = format!("{}?{query}", comments_url(agent, stream));
    crate::eventually(
        Duration::from_secs(30),
        &format!("comment room {stream} on {}", agent.node_id()),
        || async { CommentClient::connect(&url).await },
    )
    .await
}

/// The `q` quantile (0..=1) of `v` (sorted in place); 0 when empty.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Resident memory of process `pid` (KiB), from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A raw WebSocket upgrade request for `path` (no extensions).
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}
