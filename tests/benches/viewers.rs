//! Many RTMP or LL-HLS viewers of one stream, for the whole-run fan-out
//! comparison of `scripts/bench-rtmp-hls.sh` (phases 4 and 5): the
//! counterpart of `flvload` (../shared/bench) for the two other ways of
//! playing, with the same output line so the script reads all three alike.
//!
//! ```text
//! cargo bench -p vantage-tests --bench viewers -- rtmp 127.0.0.1:1935 live/x 2000 8
//! cargo bench -p vantage-tests --bench viewers -- hls 127.0.0.1:8080 live/x 2000 8
//! ```
//!
//! Every viewer connects at once; after a 2 s warm-up, the bytes each one
//! receives over SECONDS are counted, and it prints
//! `connected= active= total_mbps= min_kbps= median_kbps=` like `flvload`.
//!
//! - `rtmp`: handshake, `connect` to the app, `createStream`, `play` on
//!   message stream 1, then every byte read counts (chunk headers included,
//!   as `flvload` counts FLV tag headers); the viewer never acknowledges (the
//!   agent does not wait for acknowledgements of players).
//! - `hls`: one HTTP/1.1 keep-alive connection per viewer that follows the
//!   live edge as an LL-HLS player does: the playlist, then for each part
//!   the blocking playlist reload (`_HLS_msn`/`_HLS_part` of the preload
//!   hint) and the part itself; playlist and part bodies count.
//!
//! One thread (like `flvload`), bounded in time: it stops by itself after
//! 2 s + SECONDS (connections still opening then are dropped).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vantage_shared::flv::amf::Value;
use vantage_shared::rtmp::message::string;
use vantage_tests::rtmp::RtmpClient;

const WARM_UP: Duration = Duration::from_secs(2);
/// Largest playlist or part accepted (a bench guard, far above a 2 Mbps part).
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rtmp,
    Hls,
}

struct Viewer {
    bytes: AtomicU64,
    connected: AtomicBool,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.len() != 5 {
        eprintln!("usage: viewers rtmp|hls HOST:PORT APP/STREAM CONNS SECONDS");
        std::process::exit(2);
    }
    let kind = match args[0].as_str() {
        "rtmp" => Kind::Rtmp,
        "hls" => Kind::Hls,
        other => {
            eprintln!("unknown kind {other:?}: rtmp or hls");
            std::process::exit(2);
        }
    };
    let (Ok(addr), Some((app, stream)), Ok(n), Ok(secs)) = (
        args[1].parse::<SocketAddr>(),
        args[2].split_once('/'),
        args[3].parse::<usize>(),
        args[4].parse::<f64>(),
    ) else {
        eprintln!(
            "bad arguments {args:?}: usage: viewers rtmp|hls HOST:PORT APP/STREAM CONNS SECONDS"
        );
        std::process::exit(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start a tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let line = runtime.block_on(run(
        kind,
        addr,
        app.to_owned(),
        stream.to_owned(),
        n,
        Duration::from_secs_f64(secs),
    ));
    println!("{line}");
}

async fn run(
    kind: Kind,
    addr: SocketAddr,
    app: String,
    stream: String,
    n: usize,
    window: Duration,
) -> String {
    let viewers: Vec<Arc<Viewer>> = (0..n)
        .map(|_| {
            Arc::new(Viewer {
                bytes: AtomicU64::new(0),
                connected: AtomicBool::new(false),
            })
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for v in &viewers {
        let (v, app, stream) = (v.clone(), app.clone(), stream.clone());
        tasks.spawn(async move {
            let r = match kind {
                Kind::Rtmp => rtmp_viewer(addr, &app, &stream, &v).await,
                Kind::Hls => hls_viewer(addr, &app, &stream, &v).await,
            };
            if let Err(e) = r {
                eprintln!("viewer: {e}");
            }
        });
    }
    tokio::time::sleep(WARM_UP).await;
    for v in &viewers {
        v.bytes.store(0, Ordering::Relaxed);
    }
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let dt = t0.elapsed().as_secs_f64();
    let mut counts: Vec<u64> = viewers
        .iter()
        .map(|v| v.bytes.load(Ordering::Relaxed))
        .collect();
    let connected = viewers
        .iter()
        .filter(|v| v.connected.load(Ordering::Relaxed))
        .count();
    tasks.abort_all();
    let total: u64 = counts.iter().sum();
    let active = counts.iter().filter(|&&b| b > 0).count();
    counts.sort_unstable();
    let kbps = |b: u64| b as f64 * 8.0 / dt / 1e3;
    format!(
        "connected={connected} active={active} total_mbps={:.1} min_kbps={:.0} median_kbps={:.0}",
        total as f64 * 8.0 / dt / 1e6,
        counts.first().map_or(0.0, |&b| kbps(b)),
        counts.get(n / 2).map_or(0.0, |&b| kbps(b)),
    )
}

async fn rtmp_viewer(addr: SocketAddr, app: &str, stream: &str, v: &Viewer) -> Result<(), String> {
    let mut c = RtmpClient::connect(addr).await?;
    c.connect_app(app).await?;
    c.command("createStream", 2.0, Value::Null, vec![], 0)
        .await?;
    c.wait_command(|c| c.name == "_result", Duration::from_secs(5))
        .await?;
    c.command("play", 3.0, Value::Null, vec![string(stream)], 1)
        .await?;
    v.connected.store(true, Ordering::Relaxed);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let got = c
            .sock
            .read(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if got == 0 {
            return Err("the server closed the connection".into());
        }
        v.bytes.fetch_add(got as u64, Ordering::Relaxed);
    }
}

async fn hls_viewer(addr: SocketAddr, app: &str, stream: &str, v: &Viewer) -> Result<(), String> {
    let mut conn = HttpConn::open(addr).await?;
    let base = format!("/{app}/{stream}");
    let playlist = conn.get(&format!("{base}/index.m3u8")).await?;
    v.connected.store(true, Ordering::Relaxed);
    let (mut msn, mut part) = preload_hint(&playlist)?;
    loop {
        // Blocks until part (msn, part) is complete, like hls.js's reload.
        let playlist = conn
            .get(&format!(
                "{base}/index.m3u8?_HLS_msn={msn}&_HLS_part={part}"
            ))
            .await?;
        let body = conn.get(&format!("{base}/seg{msn}.{part}.m4s")).await?;
        v.bytes
            .fetch_add((playlist.len() + body.len()) as u64, Ordering::Relaxed);
        (msn, part) = preload_hint(&playlist)?;
    }
}

/// `(msn, part)` of the playlist's `EXT-X-PRELOAD-HINT` (`seg{msn}.{part}.m4s`).
fn preload_hint(playlist: &[u8]) -> Result<(u64, u64), String> {
    let text = std::str::from_utf8(playlist).map_err(|_| "playlist is not UTF-8".to_owned())?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with("#EXT-X-PRELOAD-HINT:"))
        .ok_or("no EXT-X-PRELOAD-HINT in the playlist")?;
    let uri = line
        .split("URI=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .ok_or("preload hint without URI")?;
    let (msn, part) = uri
        .strip_prefix("seg")
        .and_then(|r| r.strip_suffix(".m4s"))
        .and_then(|r| r.split_once('.'))
        .ok_or_else(|| format!("unexpected part URI {uri:?}"))?;
    Ok((
        msn.parse().map_err(|_| format!("bad msn in {uri:?}"))?,
        part.parse().map_err(|_| format!("bad part in {uri:?}"))?,
    ))
}

/// One HTTP/1.1 keep-alive connection; answers must carry Content-Length.
struct HttpConn {
    sock: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    async fn open(addr: SocketAddr) -> Result<HttpConn, String> {
        let sock = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        sock.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(HttpConn {
            sock,
            buf: Vec::with_capacity(256 * 1024),
        })
    }

    async fn get(&mut self, path: &str) -> Result<Vec<u8>, String> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
        self.sock
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > 64 * 1024 {
                return Err("response head over 64 KiB".into());
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| "response head is not UTF-8".to_owned())?;
        let status = head.split(' ').nth(1).unwrap_or("");
        if status != "200" {
            return Err(format!("GET {path}: {}", head.lines().next().unwrap_or("")));
        }
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| format!("GET {path}: no Content-Length"))?;
        if len > MAX_BODY {
            return Err(format!("GET {path}: body of {len} bytes"));
        }
        while self.buf.len() < head_end + len {
            self.fill().await?;
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Ok(body)
    }

    async fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 64 * 1024];
        let got = self
            .sock
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if got == 0 {
            return Err("the server closed the connection".into());
        }
        self.buf.extend_from_slice(&chunk[..got]);
        Ok(())
    }
}
