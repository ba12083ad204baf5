//! `TCP_INFO` of a socket (Linux).
//!
//! Neither `socket2` nor `rustix` exposes `TCP_INFO`, so this module holds
//! the agent's only `unsafe`: one `getsockopt` call into a byte buffer
//! (`sys`). Parsing the buffer is safe code over the kernel's stable
//! layout (`include/uapi/linux/tcp.h`: fields are only ever appended, and
//! the kernel reports how many bytes it wrote, so fields an old kernel does
//! not have come back as `None`).

use std::io;
use std::os::fd::AsFd;

/// The fields of `struct tcp_info` the viewer path uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpInfo {
    /// `TCP_ESTABLISHED` = 1, ...
    pub state: u8,
    /// Consecutive retransmission timeouts of the segment at the head now.
    pub retransmits: u8,
    /// Smoothed RTT, µs.
    pub rtt_us: u32,
    /// RTT variation, µs.
    pub rttvar_us: u32,
    /// Segments retransmitted over the connection's life.
    pub total_retrans: u32,
    /// Bytes acknowledged by the peer (Linux ≥ 4.1).
    pub bytes_acked: Option<u64>,
    /// Segments sent, retransmissions included (Linux ≥ 4.2).
    pub segs_out: Option<u32>,
    /// Minimum RTT seen, µs (Linux ≥ 4.6).
    pub min_rtt_us: Option<u32>,
    /// Recent delivery rate, bytes/s (Linux ≥ 4.9).
    pub delivery_rate: Option<u64>,
}

/// Offsets in `struct tcp_info` (native endian).
mod offset {
    pub const STATE: usize = 0;
    pub const RETRANSMITS: usize = 2;
    pub const RTT: usize = 68;
    pub const RTTVAR: usize = 72;
    pub const TOTAL_RETRANS: usize = 100;
    pub const BYTES_ACKED: usize = 120;
    pub const SEGS_OUT: usize = 136;
    pub const MIN_RTT: usize = 148;
    pub const DELIVERY_RATE: usize = 160;
}

/// Bytes up to and including `total_retrans`: every kernel since 2.6 has them.
pub const MIN_LEN: usize = offset::TOTAL_RETRANS + 4;

impl TcpInfo {
    /// Parses what the kernel wrote; `None` if it is too short to hold the
    /// basic fields.
    pub fn parse(buf: &[u8]) -> Option<TcpInfo> {
        if buf.len() < MIN_LEN {
            return None;
        }
        let u32_at = |at: usize| {
            buf.get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes)
        };
        let u64_at = |at: usize| {
            buf.get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes)
        };
        Some(TcpInfo {
            state: *buf.get(offset::STATE)?,
            retransmits: *buf.get(offset::RETRANSMITS)?,
            rtt_us: u32_at(offset::RTT)?,
            rttvar_us: u32_at(offset::RTTVAR)?,
            total_retrans: u32_at(offset::TOTAL_RETRANS)?,
            bytes_acked: u64_at(offset::BYTES_ACKED),
            segs_out: u32_at(offset::SEGS_OUT),
            min_rtt_us: u32_at(offset::MIN_RTT),
            delivery_rate: u64_at(offset::DELIVERY_RATE),
        })
    }

    pub fn rtt_ms(&self) -> f64 {
        f64::from(self.rtt_us) / 1000.0
    }

    pub fn rttvar_ms(&self) -> f64 {
        f64::from(self.rttvar_us) / 1000.0
    }

    /// Delivery rate in Mbit/s, if the kernel reports it.
    pub fn delivery_rate_mbps(&self) -> Option<f64> {
        self.delivery_rate.map(|b| b as f64 * 8.0 / 1e6)
    }
}

/// Reads `TCP_INFO` of a TCP socket.
pub fn tcp_info(socket: &impl AsFd) -> io::Result<TcpInfo> {
    let mut buf = [0u8; 256];
    let len = sys::tcp_info(socket.as_fd(), &mut buf)?;
    buf.get(..len)
        .and_then(TcpInfo::parse)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "TCP_INFO too short"))
}

#[cfg(target_os = "linux")]
mod sys {
    use std::io;
    use std::os::fd::{AsRawFd, BorrowedFd};

    /// `getsockopt(fd, IPPROTO_TCP, TCP_INFO, buf, &len)`; returns the
    /// number of bytes the kernel wrote.
    #[allow(unsafe_code)]
    pub fn tcp_info(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        let mut len = libc::socklen_t::try_from(buf.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "buffer too large"))?;
        // SAFETY: `fd` is an open descriptor for the whole call (a borrow of
        // its owner). `buf` is valid for writes of `len` bytes; the kernel
        // writes at most `len` bytes into it and stores the count in `len`,
        // which points to a live, initialised `socklen_t`. The buffer is
        // plain bytes, so any content the kernel writes is a valid value.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                buf.as_mut_ptr().cast::<libc::c_void>(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(len).unwrap_or(0).min(buf.len()))
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use std::io;
    use std::os::fd::BorrowedFd;

    pub fn tcp_info(_fd: BorrowedFd<'_>, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "TCP_INFO sampling needs Linux",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn offsets_match_the_c_struct() {
        use std::mem::offset_of;
        assert_eq!(offset_of!(libc::tcp_info, tcpi_state), offset::STATE);
        assert_eq!(
            offset_of!(libc::tcp_info, tcpi_retransmits),
            offset::RETRANSMITS
        );
        assert_eq!(offset_of!(libc::tcp_info, tcpi_rtt), offset::RTT);
        assert_eq!(offset_of!(libc::tcp_info, tcpi_rttvar), offset::RTTVAR);
        assert_eq!(
            offset_of!(libc::tcp_info, tcpi_total_retrans),
            offset::TOTAL_RETRANS
        );
        assert_eq!(
            offset_of!(libc::tcp_info, tcpi_bytes_acked),
            offset::BYTES_ACKED
        );
        assert_eq!(offset_of!(libc::tcp_info, tcpi_segs_out), offset::SEGS_OUT);
        assert_eq!(offset_of!(libc::tcp_info, tcpi_min_rtt), offset::MIN_RTT);
        assert_eq!(
            offset_of!(libc::tcp_info, tcpi_delivery_rate),
            offset::DELIVERY_RATE
        );
    }

    #[test]
    fn parse_is_total_and_honours_the_length() {
        assert_eq!(TcpInfo::parse(&[]), None);
        assert_eq!(TcpInfo::parse(&[0; MIN_LEN - 1]), None);
        let mut buf = vec![0u8; MIN_LEN];
        buf[0] = 1;
        buf[offset::RTT..offset::RTT + 4].copy_from_slice(&1500u32.to_ne_bytes());
        let info = TcpInfo::parse(&buf).unwrap();
        assert_eq!(info.state, 1);
        assert_eq!(info.rtt_ms(), 1.5);
        assert_eq!(info.segs_out, None, "old kernel: field absent");
        assert_eq!(info.delivery_rate, None);
        let mut long = vec![0u8; 256];
        long[offset::DELIVERY_RATE..offset::DELIVERY_RATE + 8]
            .copy_from_slice(&125_000u64.to_ne_bytes());
        assert_eq!(
            TcpInfo::parse(&long).unwrap().delivery_rate_mbps(),
            Some(1.0)
        );
    }

    #[test]
    fn reads_a_real_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..16 {
            server.write_all(&chunk).unwrap();
            let mut got = 0;
            let mut buf = vec![0u8; 64 * 1024];
            while got < chunk.len() {
                got += client.read(&mut buf).unwrap();
            }
        }
        let info = tcp_info(&server).unwrap();
        assert_eq!(info.state, 1, "established");
        assert!(info.rtt_us > 0, "{info:?}");
        assert_eq!(info.total_retrans, 0);
        assert!(info.segs_out.unwrap() > 0);
        assert!(info.bytes_acked.unwrap() >= 1024 * 1024 - 64 * 1024);
        assert!(info.delivery_rate.unwrap() > 0);
        // Not a TCP socket: a clear error, no panic.
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(tcp_info(&udp).is_err());
    }
}
