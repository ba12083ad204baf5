#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::sync::atomic::AtomicU64;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Default)]
struct Counts {
    accepted: AtomicU64,
    refused: AtomicU64,
    shed: AtomicU64,
    proof: AtomicU64,
    idle: AtomicU64,
}

impl ListenerEvents for Counts {
    fn accepted(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
    }
    fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
    fn closed(&self, why: Closed) {
        let c = match why {
            Closed::Shed => &self.shed,
            Closed::ProofTimeout => &self.proof,
            Closed::Idle => &self.idle,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

async fn listener(limits: Limits) -> (Listener, SocketAddr, Arc<Counts>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    (
        Listener::new(l, limits, counts.clone(), "test"),
        addr,
        counts,
    )
}

/// Serves each connection: echoes one byte per read, proving the
/// connection on its first byte.
fn serve(mut io: Guarded<TcpStream>) {
    tokio::spawn(async move {
        let mut b = [0u8; 1];
        while let Ok(1) = io.read(&mut b).await {
            io.conn().proven();
            if io.write_all(&b).await.is_err() {
                return;
            }
        }
    });
}

/// Whether the server closed `s` (read returns end of stream or an error).
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test]
async fn at_the_cap_the_oldest_unproven_connection_is_shed_and_proven_ones_stay() {
    let limits = Limits {
        max_connections: 2,
        proof_timeout: Duration::from_secs(30),
        idle_timeout: None,
    };
    let (mut l, addr, counts) = listener(limits).await;
    let accept = tokio::spawn(async move {
        loop {
            let (io, _, _) = l.accept().await;
            serve(io);
        }
    });
    // A proven client (it talked), then an idle one.
    let mut real = TcpStream::connect(addr).await.unwrap();
    real.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    real.read_exact(&mut b).await.unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A third connection: the idle one goes, not the real one.
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert!(closed(&mut idle).await, "the unproven connection was shed");
    real.write_all(b"y").await.unwrap();
    real.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"y");
    third.write_all(b"z").await.unwrap();
    third.read_exact(&mut b).await.unwrap();
    // Everyone proven: a fourth is refused.
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    assert!(closed(&mut fourth).await, "refused at the cap");
    assert_eq!(counts.shed.load(Ordering::Relaxed), 1);
    assert_eq!(counts.refused.load(Ordering::Relaxed), 1);
    assert_eq!(counts.accepted.load(Ordering::Relaxed), 3);
    accept.abort();
}

#[tokio::test]
async fn unproven_connections_time_out_and_idle_ones_too() {
    let limits = Limits {
        max_connections: 10,
        proof_timeout: Duration::from_millis(200),
        idle_timeout: Some(Duration::from_millis(300)),
    };
    let (mut l, addr, counts) = listener(limits).await;
    let accept = tokio::spawn(async move {
        loop {
            let (mut io, _, conn) = l.accept().await;
            tokio::spawn(async move {
                let mut b = [0u8; 1];
                while let Ok(1) = io.read(&mut b).await {
                    // One "request" per byte, answered after 400 ms: longer
                    // than the idle timeout, which does not run meanwhile.
                    let req = conn.begin();
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    drop(req);
                    if io.write_all(&b).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let t = std::time::Instant::now();
    assert!(closed(&mut silent).await);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(counts.proof.load(Ordering::Relaxed), 1);

    let mut talker = TcpStream::connect(addr).await.unwrap();
    talker.write_all(b"a").await.unwrap();
    let mut b = [0u8; 1];
    talker.read_exact(&mut b).await.unwrap();
    // Idle after its answer: closed after the idle timeout.
    let t = std::time::Instant::now();
    assert!(closed(&mut talker).await);
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(counts.idle.load(Ordering::Relaxed), 1);
    accept.abort();
}

#[test]
fn accept_errors_are_classified() {
    let e = |n| io::Error::from_raw_os_error(n);
    assert_eq!(accept_error_kind(&e(24)), ("emfile", true));
    assert_eq!(accept_error_kind(&e(23)), ("enfile", true));
    assert_eq!(accept_error_kind(&e(103)), ("other", false));
}
