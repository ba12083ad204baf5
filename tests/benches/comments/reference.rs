//! The minimal fan-out reference, written for this benchmark and run as a
//! child process of it (`--reference-server`): what fanning comments out to
//! N WebSocket connections costs with nothing else — no rooms, no posts, no
//! numbering, no buffers, no reading, no per-connection state but the
//! socket. An accept thread completes upgrades (blocking, one at a time);
//! the main thread takes commands on stdin and writes each batch, encoded
//! once in the same binary frame as the agent's, to every socket with one
//! non-blocking `write`, skipping a socket that would block (the agent
//! queues instead).
//!
//! Commands: `one` — one comment to everyone now; `rate R SECS WINDOW_MS` —
//! R comments per second for SECS seconds, everything due since the last
//! pass in one batch, at most one pass per window (as the agent coalesces).
//! Each answers `DONE delivered=D skipped=S writes=W`.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn accept_key(req: &str) -> Option<String> {
    let key = req.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_owned())
    })?;
    Some(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// A server frame (binary, unmasked) with `payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x82];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// A batch of `count` comments from `first` in the agent's binary form.
fn batch(first: u64, count: u64) -> Vec<u8> {
    let mut p = vec![0x02];
    p.extend_from_slice(&(count as u16).to_be_bytes());
    let ts = vantage_tests::clock_ms() as i64;
    for seq in first..first + count {
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ts.to_be_bytes());
        let user = b"bench";
        p.push(user.len() as u8);
        p.extend_from_slice(user);
        let text = format!("comment number {seq} from the benchmark");
        p.extend_from_slice(&(text.len() as u16).to_be_bytes());
        p.extend_from_slice(text.as_bytes());
    }
    frame(&p)
}

fn handshake(mut s: TcpStream) -> std::io::Result<TcpStream> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk)?;
        if n == 0 || buf.len() > 8192 {
            return Err(std::io::Error::other("bad request"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let req = String::from_utf8_lossy(&buf);
    let key = accept_key(&req).ok_or_else(|| std::io::Error::other("no key"))?;
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Accept: {key}\r\n\r\n"
    )
    .into_bytes();
    out.extend_from_slice(&frame(&[0x01]));
    s.write_all(&out)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Writes `f` to every socket once; (delivered, skipped).
fn fan_out(conns: &[TcpStream], f: &[u8]) -> (u64, u64) {
    let (mut ok, mut skipped) = (0, 0);
    for mut s in conns {
        match s.write(f) {
            Ok(n) if n == f.len() => ok += 1,
            _ => skipped += 1,
        }
    }
    (ok, skipped)
}

/// Runs the reference on `listen` until stdin closes.
pub fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    println!("PORT {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let accepted = conns.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            if let Ok(s) = handshake(s) {
                accepted.lock().unwrap_or_else(|p| p.into_inner()).push(s);
            }
        }
    });
    let mut seq = 1u64;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let conns = conns.lock().unwrap_or_else(|p| p.into_inner());
        let (mut delivered, mut skipped, mut writes) = (0u64, 0u64, 0u64);
        match words.as_slice() {
            ["one"] => {
                let (d, s) = fan_out(&conns, &batch(seq, 1));
                seq += 1;
                writes += d + s;
                delivered += d;
                skipped += s;
            }
            ["rate", rate, secs, window_ms] => {
                let rate: f64 = rate.parse().unwrap_or(200.0);
                let secs: f64 = secs.parse().unwrap_or(10.0);
                let window = Duration::from_millis(window_ms.parse().unwrap_or(100));
                // As the agent coalesces: each pass sends every comment due
                // since the last one in one batch, at most once per window;
                // a pass that takes longer than the window makes the next
                // batch larger, not later.
                let start = Instant::now();
                let first = seq;
                let mut next = start;
                while start.elapsed().as_secs_f64() < secs {
                    let due = first + (start.elapsed().as_secs_f64() * rate) as u64;
                    let n = due.saturating_sub(seq).clamp(1, u64::from(u16::MAX));
                    let (d, s) = fan_out(&conns, &batch(seq, n));
                    seq += n;
                    writes += d + s;
                    delivered += d * n;
                    skipped += s;
                    next = (next + window).max(Instant::now());
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            }
            ["count"] => {}
            _ => {}
        }
        println!(
            "DONE delivered={delivered} skipped={skipped} writes={writes} connections={} next_seq={seq}",
            conns.len()
        );
        std::io::stdout().flush()?;
    }
    Ok(())
}
