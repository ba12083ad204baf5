//! The RTMP handshake, server side.
//!
//! The client sends C0 (version, 1 byte) and C1 (1536 bytes: time, 4 bytes
//! the client fills with zeros or its Flash version, 1528 random bytes); the
//! server answers S0, S1 (its own time, zeros, random) and S2 (an echo of C1
//! with the time it read C1); the client ends with C2 (an echo of S1), which
//! the server reads and ignores.
//!
//! This is the "simple" handshake. Clients that send a Flash-Player-9
//! digest in C1 (ffmpeg does) only verify the server's digest when S1's
//! version field is ≥ 3; S1 carries zeros there, so they accept the plain
//! answer, as do OBS and librtmp for `rtmp://`. Encrypted RTMPE (C0 = 6) is
//! refused.

use super::RtmpError;
use bytes::{BufMut, Bytes, BytesMut};

/// The only version accepted in C0 (plain RTMP).
pub const VERSION: u8 = 3;
/// Length of C1, C2, S1 and S2.
pub const PACKET_LEN: usize = 1536;
/// C0 + C1: what the server reads before it answers.
pub const C0C1_LEN: usize = 1 + PACKET_LEN;

/// Checks C0 (the first byte a client sends).
pub fn check_c0(c0: u8) -> Result<(), RtmpError> {
    if c0 == VERSION {
        Ok(())
    } else {
        Err(RtmpError::BadVersion(c0))
    }
}

/// S0 + S1 + S2 for a client that sent `c0c1` (C0 already checked or
/// checked here). `time_ms` is the server's epoch for S1 and the read time
/// for S2; `random` fills S1's 1528 random bytes (cycled if shorter).
pub fn server_reply(c0c1: &[u8], time_ms: u32, random: &[u8]) -> Result<Bytes, RtmpError> {
    let Some((&c0, c1)) = c0c1.split_first() else {
        return Err(RtmpError::BadMessage {
            what: "handshake",
            detail: "empty C0".into(),
        });
    };
    check_c0(c0)?;
    if c1.len() != PACKET_LEN {
        return Err(RtmpError::BadMessage {
            what: "handshake",
            detail: format!("C1 is {} bytes, want {PACKET_LEN}", c1.len()),
        });
    }
    let mut out = BytesMut::with_capacity(1 + 2 * PACKET_LEN);
    out.put_u8(VERSION);
    // S1: time, zero (no version: no digest to verify), random.
    out.put_u32(time_ms);
    out.put_u32(0);
    if random.is_empty() {
        out.put_bytes(0, PACKET_LEN - 8);
    } else {
        for i in 0..PACKET_LEN - 8 {
            out.put_u8(random[i % random.len()]);
        }
    }
    // S2: C1's time, the time C1 was read, C1's random echoed.
    out.put_slice(&c1[..4]);
    out.put_u32(time_ms);
    out.put_slice(&c1[8..]);
    Ok(out.freeze())
}

/// C0 + C1 of a client (for tests and tools): version 3, `time_ms`, zeros,
/// `fill` repeated.
pub fn client_hello(time_ms: u32, fill: u8) -> Bytes {
    let mut out = BytesMut::with_capacity(C0C1_LEN);
    out.put_u8(VERSION);
    out.put_u32(time_ms);
    out.put_u32(0);
    out.put_bytes(fill, PACKET_LEN - 8);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_echoes_c1_in_s2() {
        let c0c1 = client_hello(1234, 0xAB);
        let r = server_reply(&c0c1, 99, b"xyz").unwrap();
        assert_eq!(r.len(), 1 + 2 * PACKET_LEN);
        assert_eq!(r[0], 3);
        assert_eq!(&r[1..5], &99u32.to_be_bytes());
        assert_eq!(&r[5..9], &[0, 0, 0, 0], "no version: clients skip digests");
        assert_eq!(&r[9..12], b"xyz");
        let s2 = &r[1 + PACKET_LEN..];
        assert_eq!(&s2[..4], &1234u32.to_be_bytes());
        assert_eq!(&s2[8..], &c0c1[9..]);
    }

    #[test]
    fn other_versions_and_short_c1_are_refused() {
        assert_eq!(check_c0(6), Err(RtmpError::BadVersion(6)));
        assert_eq!(check_c0(b'G'), Err(RtmpError::BadVersion(b'G')));
        assert!(server_reply(&[3, 0, 0], 0, &[]).is_err());
        assert!(server_reply(&[], 0, &[]).is_err());
    }
}
