//! The kernel's count of datagrams dropped at the telemetry socket because
//! its receive buffer was full. A report lost there is the scheduler's
//! fault, not the agent's: liveness uses the count to tell the two apart
//! (`App::run_liveness`), and `/metrics` exports it.
//!
//! Linux keeps the count per socket in the `drops` column of
//! `/proc/net/udp` (IPv4 sockets) or `/proc/net/udp6` (IPv6 ones, dual
//! stack included); the socket is found there by its inode (the
//! `socket:[N]` link of its descriptor). Elsewhere, or when `/proc` cannot
//! be read, the count is unknown and nothing is held.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;

/// Reads the drop count of one UDP socket.
#[derive(Debug, Clone)]
pub struct SocketDrops {
    /// The socket's inode and the table that lists it.
    row: Option<(u64, &'static str)>,
}

impl SocketDrops {
    /// The drop count of `socket` (which must stay open for the count to
    /// mean anything; the ingest thread owns it).
    pub fn of(socket: &UdpSocket) -> Self {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd()));
        let inode = link.ok().and_then(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        });
        let table = match socket.local_addr() {
            Ok(a) if a.is_ipv6() => "/proc/self/net/udp6",
            _ => "/proc/self/net/udp",
        };
        Self {
            row: inode.map(|i| (i, table)),
        }
    }

    /// A count that is never known (a socket that is not a Linux one).
    pub fn unknown() -> Self {
        Self { row: None }
    }

    /// Datagrams dropped at the socket since it was opened; `None` when the
    /// kernel does not say.
    pub fn read(&self) -> Option<u64> {
        let (inode, table) = self.row?;
        drops_in(&std::fs::read_to_string(table).ok()?, inode)
    }
}

/// The `drops` column of the row of `inode` in a `/proc/net/udp` table:
/// `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops`.
fn drops_in(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|row| {
        let cols: Vec<&str> = row.split_whitespace().collect();
        if cols.get(9)?.parse::<u64>().ok()? != inode {
            return None;
        }
        cols.get(12)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_row_of_the_inode() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
             \x20 108: 0100007F:8A2B 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 51234 2 ffff8f0e4a5c1000 0\n\
             \x20 221: 00000000:1CF2 00000000:0000 07 00000000:00002100 00:00000000 00000000     0        0 51377 2 ffff8f0e4a5c1440 3917\n";
        assert_eq!(drops_in(table, 51377), Some(3917));
        assert_eq!(drops_in(table, 51234), Some(0));
        assert_eq!(drops_in(table, 1), None);
        assert_eq!(drops_in("header only\n", 51377), None);
        assert_eq!(drops_in("h\n  1: short row 51377\n", 51377), None);
    }

    #[test]
    fn a_fresh_socket_has_dropped_nothing() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let drops = SocketDrops::of(&socket);
        if cfg!(target_os = "linux") {
            assert_eq!(drops.read(), Some(0));
        }
    }
}
