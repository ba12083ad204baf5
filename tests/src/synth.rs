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
/// dropped. The task ends with an error message if the connection fails;
/// the answer of the agent (which comes when the publish ends, or at once
/// when it is refused) is kept: [`SynthPublisher::answer`].
#[derive(Debug)]
pub struct SynthPublisher {
    task: JoinHandle<String>,
    answer: Arc<Mutex<Option<(u16, String)>>>,
}

impl SynthPublisher {
    /// 320x240 25 fps, 1 s GOP, `kbps` of video, with audio.
    pub fn start(addr: SocketAddr, path: &str, kbps: u32) -> SynthPublisher {
        let cfg = SynthConfig {
            bitrate_kbps: kbps,
            gop_frames: 25,
            ..SynthConfig::default()
        };
        Self::start_config(addr, path, cfg)
    }

    /// Publishes with this synthetic source (another picture size makes
    /// another stream a viewer can tell apart: see [`Seen::video_configs`]).
    pub fn start_config(addr: SocketAddr, path: &str, cfg: SynthConfig) -> SynthPublisher {
        let path = path.to_owned();
        let answer = Arc::new(Mutex::new(None));
        let a = answer.clone();
        let task = tokio::spawn(async move {
            match publish(addr, &path, cfg, a).await {
                Ok(()) => "publisher stopped".to_owned(),
                Err(e) => format!("publish to {addr}{path}: {e}"),
            }
        });
        SynthPublisher { task, answer }
    }

    /// Panics with the reason if the publisher has stopped.
    pub fn assert_running(&self) {
        assert!(!self.task.is_finished(), "synthetic publisher stopped");
    }

    /// The HTTP status and body the agent answered with, once it did.
    pub fn answer(&self) -> Option<(u16, String)> {
        self.answer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits up to `timeout` for the agent's answer.
    pub async fn wait_answer(&self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(a) = self.answer() {
                return Some(a);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

/// Reads the agent's answer to a publish: status line, headers, then the
/// body (Content-Length or until the connection closes, 64 KiB at most).
async fn read_answer(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    answer: Arc<Mutex<Option<(u16, String)>>>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        match rd.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 65_536 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let length: Option<usize> = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    });
    let mut body = buf[head_end..].to_vec();
    while length.is_none_or(|n| body.len() < n) && body.len() < 65_536 {
        match tokio::time::timeout(Duration::from_secs(2), rd.read(&mut tmp)).await {
            Ok(Ok(n)) if n > 0 => body.extend_from_slice(&tmp[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    *answer.lock().unwrap_or_else(|e| e.into_inner()) = Some((status, text));
}

async fn publish(
    addr: SocketAddr,
    path: &str,
    cfg: SynthConfig,
    answer: Arc<Mutex<Option<(u16, String)>>>,
) -> std::io::Result<()> {
    let sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let (rd, mut sock) = sock.into_split();
    let reader = tokio::spawn(read_answer(rd, answer));
    let _reader = ReaderGrace(Some(reader));
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

/// The answer reader outlives the writer by up to 3 s (the writer fails
/// when the agent answers and closes; the answer may still be in flight),
/// then is aborted.
struct ReaderGrace(Option<JoinHandle<()>>);

impl Drop for ReaderGrace {
    fn drop(&mut self) {
        let Some(h) = self.0.take() else { return };
        let abort = h.abort_handle();
        tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(3), h)
                .await
                .is_err()
            {
                abort.abort();
            }
        });
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
    /// Distinct video sequence headers (decoder configurations) seen, in
    /// order: one per publisher's picture size; a second one means the
    /// stream switched to another source.
    pub video_configs: Vec<Vec<u8>>,
    /// `width` of every `onMetaData` seen.
    pub widths: Vec<u32>,
    /// The body is not FLV from this point on (demuxer error).
    pub flv_error: Option<String>,
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
            let mut demux = vantage_shared::flv::Demuxer::new(16 << 20);
            loop {
                let chunk = resp.chunk().await;
                let now = Instant::now();
                let mut g = lock(&s);
                match chunk {
                    Ok(Some(b)) => {
                        g.bytes += b.len() as u64;
                        g.first_at.get_or_insert(now);
                        g.last_at = Some(now);
                        if g.flv_error.is_none() {
                            demux.push(&b);
                            inspect(&mut demux, &mut g);
                        }
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

/// Notes the decoder configurations and metadata of the tags demuxed so far.
fn inspect(demux: &mut vantage_shared::flv::Demuxer, g: &mut Seen) {
    loop {
        match demux.next_tag() {
            Ok(Some(t)) => {
                if t.is_video() && t.is_sequence_header() {
                    let body = t.body.to_vec();
                    if !g.video_configs.contains(&body) {
                        g.video_configs.push(body);
                    }
                } else if t.is_metadata()
                    && let Some(w) =
                        vantage_shared::flv::amf::Metadata::parse(&t.body).and_then(|m| m.width)
                {
                    g.widths.push(w as u32);
                }
            }
            Ok(None) => return,
            Err(e) => {
                g.flv_error = Some(e.to_string());
                return;
            }
        }
    }
}

fn lock(m: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
