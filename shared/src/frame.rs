//! Length-delimited protobuf frames: a big-endian `u32` length, then the
//! message. Readers enforce a maximum frame size before allocating, so an
//! oversized or truncated frame is an error value, never a large allocation
//! or a panic.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default maximum frame size (64 KiB): far above a report of 50 paths and
/// 100 streams, far below anything that could hurt the scheduler.
pub const DEFAULT_MAX_FRAME: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("undecodable protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes `msg` as one frame.
pub fn encode<M: prost::Message>(msg: &M) -> Bytes {
    let len = msg.encoded_len();
    let mut buf = BytesMut::with_capacity(4 + len);
    buf.put_u32(len as u32);
    // Infallible: the buffer was reserved with the exact encoded length.
    let _ = msg.encode(&mut buf);
    buf.freeze()
}

/// Writes one frame.
pub async fn write<M: prost::Message, W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &M,
) -> Result<(), FrameError> {
    w.write_all(&encode(msg)).await?;
    Ok(())
}

/// Reads one frame and decodes it. `Ok(None)` on a clean end of stream
/// between frames.
pub async fn read<M: prost::Message + Default, R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<Option<M>, FrameError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Some(M::decode(buf.as_slice())?))
}

/// Incremental frame decoder for code that is handed bytes as they arrive
/// (the scheduler's QUIC event loop) instead of reading an `AsyncRead`.
///
/// The length prefix is checked against the limit as soon as its four bytes
/// are in, so an oversized frame is refused before its body is buffered.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
}

impl FrameReader {
    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received and not yet consumed as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete frame, decoded, and its encoded length. `Ok(None)`
    /// while the frame is incomplete.
    pub fn next<M: prost::Message + Default>(
        &mut self,
        max: usize,
    ) -> Result<Option<(M, usize)>, FrameError> {
        let rest = &self.buf[self.pos..];
        let Some(prefix) = rest.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        let Some(body) = rest.get(4..4 + len) else {
            return Ok(None);
        };
        let msg = M::decode(body)?;
        self.pos += 4 + len;
        if self.pos * 2 > self.buf.capacity() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(Some((msg, len)))
    }

    /// At the end of the stream: an error if a frame was cut off.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffered() == 0 {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vantage_proto::v1::{Load, Report};

    #[tokio::test]
    async fn round_trip_and_limits() {
        let report = Report {
            seq: 9,
            load: Some(Load {
                cpu: 0.5,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut wire = encode(&report).to_vec();
        wire.extend_from_slice(&encode(&report));
        let mut r = wire.as_slice();
        let mut buf = Vec::new();
        let a: Report = read(&mut r, 1024, &mut buf).await.unwrap().unwrap();
        assert_eq!(a, report);
        let _: Report = read(&mut r, 1024, &mut buf).await.unwrap().unwrap();
        assert!(
            read::<Report, _>(&mut r, 1024, &mut buf)
                .await
                .unwrap()
                .is_none()
        );

        let big = [0xff, 0xff, 0xff, 0xff];
        let err = read::<Report, _>(&mut &big[..], 1024, &mut buf)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));

        let cut = &encode(&report)[..5];
        let err = read::<Report, _>(&mut &cut[..], 1024, &mut buf)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Truncated));

        let garbage = [0, 0, 0, 3, 0xff, 0xff, 0xff];
        let err = read::<Report, _>(&mut &garbage[..], 1024, &mut buf)
            .await
            .unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)));
    }
    #[test]
    fn incremental_reader_reassembles_and_limits() {
        let report = Report {
            seq: 7,
            ..Default::default()
        };
        let mut wire = encode(&report).to_vec();
        wire.extend_from_slice(&encode(&report));
        let mut r = FrameReader::default();
        let mut got = Vec::new();
        // Byte by byte: frames come out whole, exactly when complete.
        for b in &wire {
            r.push(std::slice::from_ref(b));
            while let Some((m, len)) = r.next::<Report>(1024).unwrap() {
                assert_eq!(len, wire.len() / 2 - 4);
                got.push(m);
            }
        }
        assert_eq!(got, vec![report.clone(), report.clone()]);
        assert!(r.finish().is_ok());

        let mut r = FrameReader::default();
        r.push(&encode(&report)[..3]);
        assert!(r.next::<Report>(1024).unwrap().is_none());
        assert!(matches!(r.finish(), Err(FrameError::Truncated)));

        // Refused from the prefix alone, before the body arrives.
        let mut r = FrameReader::default();
        r.push(&[0, 1, 0, 0]);
        assert!(matches!(
            r.next::<Report>(1024),
            Err(FrameError::TooLarge {
                len: 65536,
                max: 1024
            })
        ));

        let mut r = FrameReader::default();
        r.push(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        assert!(matches!(r.next::<Report>(1024), Err(FrameError::Decode(_))));
    }

    proptest::proptest! {
        /// Whole frames followed by arbitrary bytes, in arbitrary chunks
        /// (what a hostile agent can send): the reader never panics, hands
        /// out the whole frames in order however they were cut, never a
        /// frame over the limit, and every frame it decodes from the
        /// garbage survives a re-encode.
        #[test]
        fn frames_then_arbitrary_bytes_never_panic(
            seqs in proptest::collection::vec(proptest::prelude::any::<(u64, f64)>(), 0..8),
            garbage in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
            chunk in 1usize..64,
        ) {
            use vantage_proto::v1::{Load, Report, TelemetryFrame, telemetry_frame};
            let sent: Vec<Bytes> = seqs
                .iter()
                .map(|&(seq, cpu)| {
                    encode(&TelemetryFrame {
                        kind: Some(telemetry_frame::Kind::Report(Report {
                            seq,
                            load: Some(Load { cpu, ..Default::default() }),
                            ..Default::default()
                        })),
                    })
                })
                .collect();
            let mut wire: Vec<u8> = sent.iter().flat_map(|b| b.iter().copied()).collect();
            wire.extend_from_slice(&garbage);
            let mut r = FrameReader::default();
            let mut got = Vec::new();
            'stream: for piece in wire.chunks(chunk) {
                r.push(piece);
                loop {
                    match r.next::<TelemetryFrame>(512) {
                        Ok(Some((f, len))) => {
                            proptest::prop_assert!(len <= 512);
                            let again = encode(&f);
                            let mut reader = FrameReader::default();
                            reader.push(&again);
                            let (g, _) = reader.next::<TelemetryFrame>(usize::MAX).unwrap().unwrap();
                            proptest::prop_assert_eq!(&encode(&g), &again);
                            got.push(again);
                        }
                        Ok(None) => break,
                        Err(_) => break 'stream,
                    }
                }
            }
            proptest::prop_assert!(got.len() >= sent.len(), "{} of {} frames", got.len(), sent.len());
            proptest::prop_assert_eq!(&got[..sent.len()], &sent[..]);
        }
    }
}
