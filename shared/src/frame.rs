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
}
