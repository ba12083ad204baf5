//! TCP impairment proxy: accepts a client, connects upstream, and pumps
//! bytes both ways. Each read becomes a chunk stamped with its release time
//! (token bucket + delay + jitter, never earlier than the chunk ahead of it);
//! a writer task sends it at that time. The chunk queue between reader and
//! writer is small and bounded, so a slow link pushes back on the sender
//! instead of buffering without limit. Loss does not apply: the byte stream
//! is reliable (a userspace proxy cannot make the kernel retransmit).

use super::shaper::Shaper;
use super::stats::{Counters, inc};
use super::{Direction, ImpairError, ImpairHandle, Impairment, Link, Options};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Chunks queued per direction of a connection.
const CHUNK_QUEUE: usize = 16;
/// Largest chunk (one read).
const MAX_CHUNK: usize = 16 * 1024;

/// Starts TCP impairment proxies.
#[derive(Debug)]
pub struct TcpImpair;

impl TcpImpair {
    /// Listens on `listen` (port 0 for any) and forwards every connection to
    /// `upstream`.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        imp: Impairment,
    ) -> Result<ImpairHandle, ImpairError> {
        Self::start_with(listen, upstream, imp, Options::default()).await
    }

    pub async fn start_with(
        listen: SocketAddr,
        upstream: SocketAddr,
        imp: Impairment,
        opts: Options,
    ) -> Result<ImpairHandle, ImpairError> {
        imp.validate()?;
        let bind_err = |source| ImpairError::Bind {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let (control, imp_rx) = watch::channel(imp);
        let held = watch::Sender::new(BTreeSet::new());
        let counters = Arc::new(Counters::default());
        let links = Links {
            imp: imp_rx,
            held: held.subscribe(),
            // One token bucket per direction, shared by all connections: the
            // proxy is one link.
            up: Arc::new(Mutex::new(Shaper::new(opts.seed))),
            down: Arc::new(Mutex::new(Shaper::new(opts.seed ^ 0x9e37_79b9_7f4a_7c15))),
            counters: counters.clone(),
        };
        let task = tokio::spawn(accept_loop(listener, upstream, links, opts));
        Ok(ImpairHandle {
            local_addr,
            upstream,
            control,
            counters,
            held,
            task,
        })
    }
}

#[derive(Clone)]
struct Links {
    imp: watch::Receiver<Impairment>,
    /// Client addresses whose connections are frozen ([`ImpairHandle::hold`]).
    held: watch::Receiver<BTreeSet<SocketAddr>>,
    up: Arc<Mutex<Shaper>>,
    down: Arc<Mutex<Shaper>>,
    counters: Arc<Counters>,
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, links: Links, opts: Options) {
    // Connection tasks live in this set: aborting the accept loop drops it
    // and with it every connection.
    let mut conns = JoinSet::new();
    let counters = links.counters.clone();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((client, peer)) => {
                    if conns.len() >= opts.max_flows {
                        inc(&counters.flows_refused, 1);
                        continue; // dropping `client` closes it
                    }
                    inc(&counters.flows_total, 1);
                    conns.spawn(connection(client, peer, upstream, links.clone(), opts.clone()));
                }
                Err(_) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    inc(&counters.errors, 1);
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
        counters
            .flows_active
            .store(conns.len() as u64, Ordering::Relaxed);
    }
}

async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    upstream: SocketAddr,
    links: Links,
    opts: Options,
) {
    let up = match tokio::time::timeout(opts.connect_timeout, TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => s,
        _ => {
            inc(&links.counters.errors, 1);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    tokio::join!(
        pump(
            cr,
            uw,
            Direction::Upstream,
            peer,
            links.clone(),
            opts.precise
        ),
        pump(ur, cw, Direction::Downstream, peer, links, opts.precise),
    );
}

/// Bytes per read: at most [`MAX_CHUNK`], and about 10 ms of traffic when
/// rate limited, so the bucket paces smoothly.
fn chunk_size(link: &Link) -> usize {
    match link.rate {
        None => MAX_CHUNK,
        Some(r) => ((r.bits_per_sec / 8 / 100) as usize).clamp(512, MAX_CHUNK),
    }
}

/// One direction of a connection: read, stamp, queue; write at release time.
/// Ends (shutting down the write side) at EOF or on an error either side.
async fn pump(
    mut r: OwnedReadHalf,
    mut w: OwnedWriteHalf,
    dir: Direction,
    peer: SocketAddr,
    links: Links,
    precise: bool,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Instant, Vec<u8>)>(CHUNK_QUEUE);
    let counters = links.counters.clone();
    let reader = async move {
        let shaper = match dir {
            Direction::Upstream => links.up.clone(),
            Direction::Downstream => links.down.clone(),
        };
        let c = links.counters.dir(dir);
        let mut last: Option<Instant> = None;
        loop {
            let size = chunk_size(links.imp.borrow().link(dir));
            let mut buf = vec![0u8; size];
            let n = match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.truncate(n);
            // A held connection forwards nothing (its bytes wait here and in
            // the kernel's buffers) until it is released.
            let mut held = links.held.clone();
            while held.borrow_and_update().contains(&peer) {
                if held.changed().await.is_err() {
                    return;
                }
            }
            let now = Instant::now();
            // The impairment in force when the bytes arrived.
            let link = *links.imp.borrow().link(dir);
            let mut release = shaper
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .chunk(&link, now, n);
            // A byte stream stays in order whatever the jitter.
            if let Some(l) = last {
                release = release.max(l);
            }
            last = Some(release);
            inc(&c.received, 1);
            inc(&c.bytes_received, n as u64);
            if tx.send((now, release, buf)).await.is_err() {
                break;
            }
        }
        // Dropping `tx` tells the writer: nothing more after the queue.
    };
    let writer = async move {
        let c = counters.dir(dir);
        while let Some((arrived, release, data)) = rx.recv().await {
            if precise {
                super::sleep_precisely_until(release).await;
            } else {
                tokio::time::sleep_until(release).await;
            }
            let sent = Instant::now();
            if w.write_all(&data).await.is_err() {
                return; // dropping `rx` stops the reader
            }
            c.forwarded(data.len(), arrived, release, sent);
        }
        let _ = w.shutdown().await;
    };
    // The writer outlives the reader (it drains the queue); if it ends first
    // (the far side is gone) there is no point reading on.
    tokio::pin!(reader, writer);
    tokio::select! {
        () = &mut reader => writer.await,
        () = &mut writer => {}
    }
}
