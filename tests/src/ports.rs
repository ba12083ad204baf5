//! Free loopback ports.
//!
//! Ports are drawn at random from 20000–32767, below Linux's ephemeral range
//! (32768–60999), so they never collide with the source ports of outgoing
//! connections, and checked by binding. A process-wide set keeps one test
//! process from handing out the same port twice; across processes the
//! random draw makes a clash unlikely, and [`crate::Scheduler`] retries with
//! new ports when a start fails with "address in use".

use rand::Rng;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::{Mutex, PoisonError};

const LOW: u16 = 20_000;
const HIGH: u16 = 32_767;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Which protocols the port must be free for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Both,
}

fn bindable(port: u16, proto: Proto) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let tcp = || TcpListener::bind(addr).is_ok();
    let udp = || UdpSocket::bind(addr).is_ok();
    match proto {
        Proto::Tcp => tcp(),
        Proto::Udp => udp(),
        Proto::Both => tcp() && udp(),
    }
}

/// A loopback port that is free for `proto` right now.
pub fn free_port(proto: Proto) -> u16 {
    let mut rng = rand::rng();
    for _ in 0..10_000 {
        let port = rng.random_range(LOW..=HIGH);
        let mut guard = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
        let set = guard.get_or_insert_with(HashSet::new);
        if set.contains(&port) || !bindable(port, proto) {
            continue;
        }
        set.insert(port);
        return port;
    }
    panic!("no free loopback port found in {LOW}..={HIGH}");
}

/// A free TCP port on 127.0.0.1.
pub fn free_tcp_port() -> u16 {
    free_port(Proto::Tcp)
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    free_port(Proto::Udp)
}

/// Whether `port` can be bound on 127.0.0.1 for `proto` right now.
pub fn is_free(port: u16, proto: Proto) -> bool {
    bindable(port, proto)
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}
