//! `vantage-idle-sockets ADDR N [PARALLEL]`: opens up to N TCP connections
//! to ADDR that send nothing and holds them until its standard input
//! closes (or it is killed). A test tool for the connection-limit tests:
//! one process per few thousand sockets keeps each under its own
//! descriptor limit.
//!
//! Output, one line each: `held H failed F` once the connections are open,
//! then every second `closed C`: how many of them the server has closed.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use vantage_tests::flood::{IdleSockets, raise_fd_limit};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(addr), Some(n)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: vantage-idle-sockets ADDR N [PARALLEL]");
    };
    let addr: SocketAddr = addr.parse()?;
    let n: usize = n.parse()?;
    let parallel: usize = args.get(3).map(|p| p.parse()).transpose()?.unwrap_or(500);
    // Up to the hard limit (raising that needs privileges).
    if let Err(e) = raise_fd_limit(n as u64 + 256) {
        eprintln!("{e}");
    }
    let held = IdleSockets::open(addr, n, parallel, Duration::from_secs(60)).await;
    println!("held {} failed {}", held.len(), held.failed);
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            r = stdin.read(&mut buf) => {
                if matches!(r, Ok(0) | Err(_)) {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                println!("closed {}", held.closed_by_server());
            }
        }
    }
}
