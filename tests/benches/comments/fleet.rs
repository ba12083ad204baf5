//! The benchmark's clients: thousands of lean WebSocket connections in this
//! process (raw TCP, a hand-made upgrade, a small incremental frame parser,
//! masked pings at the heartbeat interval), reading the binary comment
//! format (`?format=binary`) so counting comments costs a header read.
//! Each connection records the first sequence number of the last batch it
//! received and when, and how many comments it received.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Upgrades tried again after a failure (reported by the benchmark).
pub static RETRIES: AtomicU64 = AtomicU64::new(0);

/// What one connection saw (shared with the benchmark).
#[derive(Debug, Default)]
pub struct Stat {
    pub welcomed: AtomicBool,
    /// Highest sequence number received (the last entry of a batch).
    pub last_seq: AtomicU64,
    /// When the last batch arrived (ns since the fleet's epoch).
    pub last_at_ns: AtomicU64,
    pub comments: AtomicU64,
    pub frames: AtomicU64,
    pub closed: AtomicBool,
}

/// Many connections to one room.
pub struct Fleet {
    pub stats: Vec<Arc<Stat>>,
    pub epoch: Instant,
    tasks: JoinSet<()>,
    stop: CancellationToken,
}

/// Incremental parser of unmasked server frames.
#[derive(Default)]
struct Parser {
    hdr: [u8; 10],
    hdr_have: usize,
    hdr_need: usize,
    left: u64,
    opcode: u8,
    /// First payload bytes of the current frame.
    peek: [u8; 32],
    peek_have: usize,
    len: u64,
}

/// A complete frame: its opcode, length and first payload bytes.
struct Frame<'a> {
    opcode: u8,
    len: u64,
    peek: &'a [u8],
}

impl Parser {
    /// Feeds `data`; calls `on` for every complete frame.
    fn feed(&mut self, mut data: &[u8], mut on: impl FnMut(Frame<'_>)) {
        while !data.is_empty() {
            if self.hdr_need == 0 || self.hdr_have < self.hdr_need {
                // Header: 2 bytes, then the extended length.
                if self.hdr_need == 0 {
                    self.hdr_need = 2;
                }
                let take = (self.hdr_need - self.hdr_have).min(data.len());
                self.hdr[self.hdr_have..self.hdr_have + take].copy_from_slice(&data[..take]);
                self.hdr_have += take;
                data = &data[take..];
                if self.hdr_have == 2 {
                    self.hdr_need = match self.hdr[1] & 0x7f {
                        126 => 4,
                        127 => 10,
                        _ => 2,
                    };
                }
                if self.hdr_have < self.hdr_need {
                    continue;
                }
                self.opcode = self.hdr[0] & 0x0f;
                self.len = match self.hdr[1] & 0x7f {
                    126 => u64::from(u16::from_be_bytes([self.hdr[2], self.hdr[3]])),
                    127 => u64::from_be_bytes(self.hdr[2..10].try_into().unwrap_or([0; 8])),
                    n => u64::from(n),
                };
                self.left = self.len;
                self.peek_have = 0;
            }
            let take = (self.left as usize).min(data.len());
            let room = self.peek.len() - self.peek_have;
            let p = take.min(room);
            self.peek[self.peek_have..self.peek_have + p].copy_from_slice(&data[..p]);
            self.peek_have += p;
            self.left -= take as u64;
            data = &data[take..];
            if self.left == 0 {
                on(Frame {
                    opcode: self.opcode,
                    len: self.len,
                    peek: &self.peek[..self.peek_have],
                });
                self.hdr_have = 0;
                self.hdr_need = 0;
            }
        }
    }
}

/// A masked client frame (binary) with `payload`.
pub fn masked(payload: &[u8]) -> Vec<u8> {
    let mask: [u8; 4] = rand::random();
    let mut f = vec![0x82];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A post in the binary form: `[0x82][id length][id][text]`, masked.
pub fn post_frame(id: &str, text: &str) -> Vec<u8> {
    let mut p = vec![0x82, id.len() as u8];
    p.extend_from_slice(id.as_bytes());
    p.extend_from_slice(text.as_bytes());
    masked(&p)
}

/// `[0x81][token]`, masked.
pub fn auth_frame(token: &str) -> Vec<u8> {
    let mut p = vec![0x81];
    p.extend_from_slice(token.as_bytes());
    masked(&p)
}

/// Opens a connection and completes the upgrade; returns the stream and
/// what was read past the response head.
pub async fn upgrade(addr: SocketAddr, path: &str) -> std::io::Result<(TcpStream, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed during the upgrade"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                return Err(std::io::Error::other(format!(
                    "upgrade refused: {}",
                    String::from_utf8_lossy(&buf[..end])
                )));
            }
            return Ok((s, buf[end + 4..].to_vec()));
        }
        if buf.len() > 8192 {
            return Err(std::io::Error::other("response head too long"));
        }
    }
}

impl Fleet {
    /// Connects `n` clients to `path` at `addr`, `concurrency` at a time;
    /// each pings every `heartbeat` (first ping at a random phase).
    pub async fn connect(
        addr: SocketAddr,
        path: &str,
        n: usize,
        concurrency: usize,
        heartbeat: Duration,
    ) -> Result<Fleet, String> {
        let epoch = Instant::now();
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut stats = Vec::with_capacity(n);
        let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut opening = JoinSet::new();
        for _ in 0..n {
            let permit = sem
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| e.to_string())?;
            let path = path.to_owned();
            opening.spawn(async move {
                // A loaded machine may drop an upgrade now and then: three
                // tries, each bounded, then the benchmark gives up.
                let mut last = String::new();
                for _ in 0..3 {
                    match tokio::time::timeout(Duration::from_secs(30), upgrade(addr, &path)).await
                    {
                        Ok(Ok(c)) => return Ok(c),
                        Ok(Err(e)) => last = e.to_string(),
                        Err(_) => last = "upgrade timed out".to_owned(),
                    }
                    RETRIES.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                drop(permit);
                Err(format!("{last} (3 tries)"))
            });
            // Reap finished handshakes as we go (bounded memory).
            while let Some(r) = opening.try_join_next() {
                let (sock, rest) = r.map_err(|e| e.to_string())??;
                let stat = Arc::new(Stat::default());
                stats.push(stat.clone());
                tasks.spawn(run(sock, rest, stat, epoch, heartbeat, stop.clone()));
            }
        }
        while let Some(r) = opening.join_next().await {
            let (sock, rest) = r.map_err(|e| e.to_string())??;
            let stat = Arc::new(Stat::default());
            stats.push(stat.clone());
            tasks.spawn(run(sock, rest, stat, epoch, heartbeat, stop.clone()));
        }
        Ok(Fleet {
            stats,
            epoch,
            tasks,
            stop,
        })
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub fn welcomed(&self) -> usize {
        self.stats
            .iter()
            .filter(|s| s.welcomed.load(Ordering::Relaxed))
            .count()
    }

    pub fn closed(&self) -> usize {
        self.stats
            .iter()
            .filter(|s| s.closed.load(Ordering::Relaxed))
            .count()
    }

    pub fn comments(&self) -> u64 {
        self.stats
            .iter()
            .map(|s| s.comments.load(Ordering::Relaxed))
            .sum()
    }

    /// Closes every connection.
    pub async fn stop(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn run(
    mut sock: TcpStream,
    rest: Vec<u8>,
    stat: Arc<Stat>,
    epoch: Instant,
    heartbeat: Duration,
    stop: CancellationToken,
) {
    let mut parser = Parser::default();
    let mut on_frame = |f: Frame<'_>| {
        if f.opcode == 0x8 {
            stat.closed.store(true, Ordering::Relaxed);
            return;
        }
        if f.opcode != 0x2 || f.peek.is_empty() {
            return;
        }
        stat.frames.fetch_add(1, Ordering::Relaxed);
        match f.peek[0] {
            0x01 => stat.welcomed.store(true, Ordering::Relaxed),
            0x02 if f.peek.len() >= 11 => {
                let count = u64::from(u16::from_be_bytes([f.peek[1], f.peek[2]]));
                let first = u64::from_be_bytes(f.peek[3..11].try_into().unwrap_or([0; 8]));
                stat.comments.fetch_add(count, Ordering::Relaxed);
                stat.last_seq
                    .store(first + count.saturating_sub(1), Ordering::Relaxed);
                stat.last_at_ns
                    .store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            _ => {}
        }
    };
    parser.feed(&rest, &mut on_frame);
    let phase = Duration::from_millis(rand::random::<u64>() % heartbeat.as_millis().max(1) as u64);
    let mut next_ping = tokio::time::Instant::now() + phase;
    let mut buf = [0u8; 2048];
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = sock.shutdown().await;
                return;
            }
            r = sock.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    stat.closed.store(true, Ordering::Relaxed);
                    return;
                }
                Ok(n) => parser.feed(&buf[..n], &mut on_frame),
            },
            _ = tokio::time::sleep_until(next_ping) => {
                next_ping += heartbeat;
                if sock.write_all(&masked(&[0x83])).await.is_err() {
                    stat.closed.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
    }
}

/// A posting connection: sends posts, reads the numbers its posts got,
/// pings every 10 s (the agent closes a silent connection).
pub struct Poster {
    write: Arc<tokio::sync::Mutex<tokio::net::tcp::OwnedWriteHalf>>,
    pub acks: tokio::sync::mpsc::UnboundedReceiver<u64>,
    reader: tokio::task::JoinHandle<()>,
    pinger: tokio::task::JoinHandle<()>,
}

impl Poster {
    /// Connects to `path` (binary format) and authenticates with `token`.
    pub async fn connect(addr: SocketAddr, path: &str, token: &str) -> Result<Poster, String> {
        let (sock, rest) = upgrade(addr, path).await.map_err(|e| e.to_string())?;
        let (mut read, mut write) = sock.into_split();
        write
            .write_all(&auth_frame(token))
            .await
            .map_err(|e| e.to_string())?;
        let (tx, acks) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut parser = Parser::default();
            let mut on = |f: Frame<'_>| {
                if f.opcode == 0x2 && f.peek.len() >= 9 && f.peek[0] == 0x03 {
                    let seq = u64::from_be_bytes(f.peek[1..9].try_into().unwrap_or([0; 8]));
                    let _ = tx.send(seq);
                }
            };
            parser.feed(&rest, &mut on);
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = read.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                parser.feed(&buf[..n], &mut on);
            }
        });
        let write = Arc::new(tokio::sync::Mutex::new(write));
        let w = write.clone();
        let pinger = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if w.lock().await.write_all(&masked(&[0x83])).await.is_err() {
                    return;
                }
            }
        });
        Ok(Poster {
            write,
            acks,
            reader,
            pinger,
        })
    }

    pub async fn post(&mut self, id: &str, text: &str) -> std::io::Result<()> {
        self.write
            .lock()
            .await
            .write_all(&post_frame(id, text))
            .await
    }

    /// Writes several posts at once.
    pub async fn post_many(&mut self, posts: &[(String, String)]) -> std::io::Result<()> {
        let mut all = Vec::new();
        for (id, text) in posts {
            all.extend(post_frame(id, text));
        }
        self.write.lock().await.write_all(&all).await
    }
}

impl Drop for Poster {
    fn drop(&mut self) {
        self.reader.abort();
        self.pinger.abort();
    }
}

/// Checks the frame parser on frames split across reads (run at the
/// start of every benchmark: a bench target has no test harness).
pub fn parser_self_check() -> Result<(), String> {
    let mut p = Parser::default();
    let mut got = Vec::new();
    let mut frames = vec![0x82u8, 3, 0x02, 0, 1];
    frames.extend_from_slice(&[0x82, 126, 0, 200]);
    frames.extend(std::iter::repeat_n(7u8, 200));
    for chunk in frames.chunks(3) {
        p.feed(chunk, |f| got.push((f.opcode, f.len, f.peek.len())));
    }
    if got == [(2, 3, 3), (2, 200, 32)] {
        Ok(())
    } else {
        Err(format!("frame parser self-check: {got:?}"))
    }
}
