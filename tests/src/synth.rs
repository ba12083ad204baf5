//! Media peers that need no external tool: a publisher of the synthetic
//! FLV source ([`vantage_shared::synth`]) over a chunked HTTP POST, paced in
//! real time, and a viewer that reads an HTTP-FLV body in the background and
//! records when media arrived.

use bytes::BytesMut;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use vantage_shared::synth::{Synth, SynthConfig};

/// How often the publisher writes the media that became due.
const PACE: Duration = Duration::from_millis(40);

/// Publishes `Synth` media to `http://<addr><path>` until stopped or
/// dropped. The task ends with an error message if the connection fails.
#[derive(Debug)]
pub struct SynthPublisher {
    task: JoinHandle<String>,
}

impl SynthPublisher {
    /// 320x240 25 fps, 1 s GOP, `kbps` of video, with audio.
    pub fn start(addr: SocketAddr, path: &str, kbps: u32) -> SynthPublisher {
        let path = path.to_owned();
        let cfg = SynthConfig {
            bitrate_kbps: kbps,
            gop_frames: 25,
            ..SynthConfig::default()
        };
        let task = tokio::spawn(async move {
            match publish(addr, &path, cfg).await {
                Ok(()) => "publisher stopped".to_owned(),
                Err(e) => format!("publish to {addr}{path}: {e}"),
            }
        });
        SynthPublisher { task }
    }

    /// Panics with the reason if the publisher has stopped.
    pub fn assert_running(&self) {
        assert!(!self.task.is_finished(), "synthetic publisher stopped");
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for SynthPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn publish(addr: SocketAddr, path: &str, cfg: SynthConfig) -> std::io::Result<()> {
    let mut sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: video/x-flv\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await?;
    let mut synth = Synth::new(cfg);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&synth.file_header().encode());
    for t in synth.header_tags() {
        t.encode_into(&mut buf);
    }
    let started = Instant::now();
    let mut tick = tokio::time::interval(PACE);
    loop {
        tick.tick().await;
        let now = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
        for t in synth.next_tags(now) {
            t.encode_into(&mut buf);
        }
        if buf.is_empty() {
            continue;
        }
        let mut chunk = Vec::with_capacity(buf.len() + 16);
        chunk.extend_from_slice(format!("{:x}\r\n", buf.len()).as_bytes());
        chunk.extend_from_slice(&buf);
        chunk.extend_from_slice(b"\r\n");
        buf.clear();
        sock.write_all(&chunk).await?;
    }
}

/// What a [`FlvViewer`] saw.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// HTTP status of the answer (0 before it arrived).
    pub status: u16,
    pub bytes: u64,
    pub first_at: Option<Instant>,
    pub last_at: Option<Instant>,
    /// The body ended (cleanly or not) at this time.
    pub ended_at: Option<Instant>,
    pub error: Option<String>,
}

/// A viewer reading an HTTP-FLV URL in the background.
#[derive(Debug)]
pub struct FlvViewer {
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl FlvViewer {
    pub fn start(url: &str) -> FlvViewer {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let url = url.to_owned();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut resp = match client.get(&url).send().await {
                Ok(r) => r,
                Err(e) => {
                    let mut g = lock(&s);
                    g.error = Some(format!("GET {url}: {e}"));
                    g.ended_at = Some(Instant::now());
                    return;
                }
            };
            lock(&s).status = resp.status().as_u16();
            loop {
                let chunk = resp.chunk().await;
                let now = Instant::now();
                let mut g = lock(&s);
                match chunk {
                    Ok(Some(b)) => {
                        g.bytes += b.len() as u64;
                        g.first_at.get_or_insert(now);
                        g.last_at = Some(now);
                    }
                    Ok(None) => {
                        g.ended_at = Some(now);
                        return;
                    }
                    Err(e) => {
                        g.ended_at = Some(now);
                        g.error = Some(e.to_string());
                        return;
                    }
                }
            }
        });
        FlvViewer { seen, task }
    }

    /// Starts a viewer of `url`, again and again until one gets media
    /// (the stream may not be published yet: 404/502 answers), for at most
    /// `timeout`; panics with the last answer otherwise.
    pub async fn start_live(url: &str, timeout: Duration) -> FlvViewer {
        let deadline = Instant::now() + timeout;
        loop {
            let v = FlvViewer::start(url);
            let left = deadline.saturating_duration_since(Instant::now());
            match v.wait_bytes(1, left).await {
                Ok(s) if s.status == 200 => return v,
                Ok(s) | Err(s) => {
                    if Instant::now() >= deadline {
                        panic!("no media from {url} within {timeout:?}: {s:?}");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn seen(&self) -> Seen {
        lock(&self.seen).clone()
    }

    /// Waits (up to `timeout`) until at least `bytes` of media arrived.
    pub async fn wait_bytes(&self, bytes: u64, timeout: Duration) -> Result<Seen, Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.seen();
            if s.bytes >= bytes {
                return Ok(s);
            }
            if s.ended_at.is_some() || Instant::now() >= deadline {
                return Err(s);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for FlvViewer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
