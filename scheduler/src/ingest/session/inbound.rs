//! One received QUIC stream of a session: the bytes the connection has
//! for it, reassembled into length-prefixed frames, and the close code a
//! bad frame earns.

use super::{Refusal, refusal};
use quinn_proto::{Connection, ReadError, StreamId};
use vantage_shared::close::CloseCode;
use vantage_shared::frame::{FrameError, FrameReader};

fn frame_refusal(e: FrameError) -> Refusal {
    let code = match e {
        FrameError::TooLarge { .. } => CloseCode::FrameTooLarge,
        FrameError::Decode(_) => CloseCode::Undecodable,
        FrameError::Truncated | FrameError::Io(_) => CloseCode::ProtocolViolation,
    };
    refusal(code, e.to_string())
}

/// One received stream: its id, the frames being reassembled, whether the
/// agent finished it.
#[derive(Default)]
pub(super) struct Inbound {
    pub(super) id: Option<StreamId>,
    frames: FrameReader,
    pub(super) finished: bool,
}

impl Inbound {
    /// Moves what the connection has received on the stream into `frames`.
    pub(super) fn pull(&mut self, conn: &mut Connection) -> Result<(), Refusal> {
        let Some(id) = self.id else { return Ok(()) };
        if self.finished {
            return Ok(());
        }
        let mut stream = conn.recv_stream(id);
        let Ok(mut chunks) = stream.read(true) else {
            // Already finished and freed.
            self.finished = true;
            return Ok(());
        };
        let result = loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => self.frames.push(&chunk.bytes),
                Ok(None) => {
                    self.finished = true;
                    break Ok(());
                }
                Err(ReadError::Blocked) => break Ok(()),
                Err(ReadError::Reset(code)) => {
                    break Err(refusal(
                        CloseCode::ProtocolViolation,
                        format!("agent reset a stream (code {code})"),
                    ));
                }
            }
        };
        // Flow-control credit goes out with the next transmit either way.
        let _ = chunks.finalize();
        result
    }

    /// The next whole frame; `Ok(None)` if none is complete yet or the
    /// stream ended cleanly between frames (see `ended`).
    pub(super) fn next<M: prost::Message + Default>(
        &mut self,
        max: usize,
    ) -> Result<Option<(M, usize)>, Refusal> {
        match self.frames.next(max).map_err(frame_refusal)? {
            Some(m) => Ok(Some(m)),
            None if self.finished => self.frames.finish().map(|()| None).map_err(frame_refusal),
            None => Ok(None),
        }
    }

    /// The agent finished the stream and every frame on it was consumed.
    pub(super) fn ended(&self) -> bool {
        self.finished && self.frames.buffered() == 0
    }
}
