//! A raw RTMP client for tests that must send what real clients never do
//! (hostile chunk sizes, AMF bombs, stalls): it speaks the handshake and
//! the chunk stream through the project's own codec
//! ([`vantage_shared::rtmp`]) and lets the test write any bytes after that.
//! Real publishing and playing go through ffmpeg ([`crate::media`]).

use bytes::BytesMut;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vantage_shared::flv::amf::Value;
use vantage_shared::rtmp::message::{self, Command, object, string};
use vantage_shared::rtmp::{ChunkDecoder, Limits, Message, handshake};

/// One RTMP connection, past its handshake.
#[derive(Debug)]
pub struct RtmpClient {
    pub sock: TcpStream,
    decoder: ChunkDecoder,
    /// The chunk size of what this client sends.
    pub chunk_size: u32,
}

impl RtmpClient {
    /// Connects and completes the handshake (within 5 s).
    pub async fn connect(addr: SocketAddr) -> Result<RtmpClient, String> {
        let work = async {
            let mut sock = TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            sock.set_nodelay(true).map_err(|e| e.to_string())?;
            sock.write_all(&handshake::client_hello(0, 0x5A))
                .await
                .map_err(|e| format!("C0C1: {e}"))?;
            let mut s012 = vec![0u8; 1 + 2 * handshake::PACKET_LEN];
            sock.read_exact(&mut s012)
                .await
                .map_err(|e| format!("S0S1S2: {e}"))?;
            if s012[0] != handshake::VERSION {
                return Err(format!("S0 is {}", s012[0]));
            }
            // C2 echoes S1.
            sock.write_all(&s012[1..1 + handshake::PACKET_LEN])
                .await
                .map_err(|e| format!("C2: {e}"))?;
            Ok(RtmpClient {
                sock,
                decoder: ChunkDecoder::new(Limits::default()),
                chunk_size: 128,
            })
        };
        tokio::time::timeout(Duration::from_secs(5), work)
            .await
            .map_err(|_| "handshake timed out".to_owned())?
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.sock
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// Sends a command on message stream `stream_id`.
    pub async fn command(
        &mut self,
        name: &str,
        transaction: f64,
        obj: Value,
        args: Vec<Value>,
        stream_id: u32,
    ) -> Result<(), String> {
        let c = Command {
            name: name.into(),
            transaction,
            object: obj,
            args,
        };
        let bytes = c.encode(stream_id, self.chunk_size);
        self.send(&bytes).await
    }

    /// `connect` to `app`, then waits for its `_result`.
    pub async fn connect_app(&mut self, app: &str) -> Result<(), String> {
        let obj = object(&[
            ("app", string(app)),
            ("tcUrl", string(&format!("rtmp://127.0.0.1/{app}"))),
        ]);
        self.command("connect", 1.0, obj, vec![], 0).await?;
        self.wait_command(|c| c.name == "_result", Duration::from_secs(5))
            .await
            .map(|_| ())
    }

    /// `createStream` then `publish(name)`; returns the `onStatus` code.
    pub async fn publish(&mut self, name: &str) -> Result<String, String> {
        self.command("createStream", 2.0, Value::Null, vec![], 0)
            .await?;
        self.wait_command(|c| c.name == "_result", Duration::from_secs(5))
            .await?;
        self.command(
            "publish",
            3.0,
            Value::Null,
            vec![string(name), string("live")],
            1,
        )
        .await?;
        let c = self
            .wait_command(|c| c.name == "onStatus", Duration::from_secs(5))
            .await?;
        Ok(status_code(&c))
    }

    /// Reads messages until a command matching `want` arrives.
    pub async fn wait_command(
        &mut self,
        want: impl Fn(&Command) -> bool,
        limit: Duration,
    ) -> Result<Command, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            while let Some(m) = self.decoder.next_message().map_err(|e| e.to_string())? {
                if let Some(c) = as_command(&m)
                    && want(&c)
                {
                    return Ok(c);
                }
            }
            let mut buf = vec![0u8; 64 * 1024];
            let n = tokio::time::timeout_at(deadline, self.sock.read(&mut buf))
                .await
                .map_err(|_| "no answer in time".to_owned())?
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.decoder.push(&buf[..n]);
        }
    }

    /// Waits (up to `limit`) for the server to close the connection; true
    /// if it did (reading and dropping what it still sends).
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        let work = async {
            loop {
                match self.sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(limit, work).await.is_ok()
    }

    /// Sends `payload` as one media message (type 8/9) at `ts` on stream 1.
    pub async fn media(&mut self, type_id: u8, ts: u32, payload: &[u8]) -> Result<(), String> {
        let mut out = BytesMut::new();
        message::media(type_id, ts, payload, 1, self.chunk_size, &mut out);
        self.send(&out).await
    }
}

/// The command a message carries, if it is one.
pub fn as_command(m: &Message) -> Option<Command> {
    matches!(m.type_id, message::COMMAND_AMF0 | message::COMMAND_AMF3)
        .then(|| Command::parse(&m.payload, m.type_id).ok())
        .flatten()
}

/// The `code` of an `onStatus` command's info object.
pub fn status_code(c: &Command) -> String {
    c.args
        .first()
        .and_then(Value::properties)
        .and_then(|p| p.iter().find(|(k, _)| k == "code"))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Publishes FLV tags over RTMP the way OBS does (`connect`,
/// `releaseStream`, `FCPublish`, `createStream`, `publish`, Set Chunk Size
/// 4096, `@setDataFrame onMetaData`, then audio/video messages).
#[derive(Debug)]
pub struct RtmpPublisher {
    client: RtmpClient,
}

impl RtmpPublisher {
    /// Connects to `addr` and starts publishing `app/name`; fails unless
    /// the server answers `NetStream.Publish.Start`.
    pub async fn start(addr: SocketAddr, app: &str, name: &str) -> Result<RtmpPublisher, String> {
        let mut client = RtmpClient::connect(addr).await?;
        let obj = object(&[
            ("app", string(app)),
            ("type", string("nonprivate")),
            ("flashVer", string("FMLE/3.0 (compatible; vantage-demo)")),
            ("tcUrl", string(&format!("rtmp://{addr}/{app}"))),
        ]);
        client.command("connect", 1.0, obj, vec![], 0).await?;
        client
            .wait_command(|c| c.name == "_result", Duration::from_secs(5))
            .await?;
        client
            .command("releaseStream", 2.0, Value::Null, vec![string(name)], 0)
            .await?;
        client
            .command("FCPublish", 3.0, Value::Null, vec![string(name)], 0)
            .await?;
        client
            .command("createStream", 4.0, Value::Null, vec![], 0)
            .await?;
        client
            .wait_command(
                |c| c.name == "_result" && c.transaction == 4.0,
                Duration::from_secs(5),
            )
            .await?;
        client
            .command(
                "publish",
                5.0,
                Value::Null,
                vec![string(name), string("live")],
                1,
            )
            .await?;
        let status = client
            .wait_command(|c| c.name == "onStatus", Duration::from_secs(5))
            .await?;
        let code = status_code(&status);
        if code != "NetStream.Publish.Start" {
            return Err(format!("publish refused: {code}"));
        }
        client.send(&message::set_chunk_size(4096, 128)).await?;
        client.chunk_size = 4096;
        Ok(RtmpPublisher { client })
    }

    /// Sends FLV tags as RTMP messages on stream 1 (script tags as
    /// `@setDataFrame`).
    pub async fn send_tags(&mut self, tags: &[vantage_shared::flv::Tag]) -> Result<(), String> {
        use vantage_shared::flv::TagKind;
        let mut out = BytesMut::new();
        for t in tags {
            match t.kind {
                TagKind::Script => {
                    let mut p = BytesMut::new();
                    vantage_shared::flv::amf::write_value(&mut p, &string("@setDataFrame"));
                    p.extend_from_slice(&t.body);
                    let h = vantage_shared::rtmp::chunk::Header {
                        csid: message::CSID_DATA,
                        timestamp: t.timestamp_ms,
                        type_id: message::DATA_AMF0,
                        stream_id: 1,
                    };
                    vantage_shared::rtmp::chunk::encode_message(
                        &h,
                        &p,
                        self.client.chunk_size,
                        &mut out,
                    );
                }
                TagKind::Audio => message::media(
                    message::AUDIO,
                    t.timestamp_ms,
                    &t.body,
                    1,
                    self.client.chunk_size,
                    &mut out,
                ),
                TagKind::Video => message::media(
                    message::VIDEO,
                    t.timestamp_ms,
                    &t.body,
                    1,
                    self.client.chunk_size,
                    &mut out,
                ),
            }
        }
        self.client.send(&out).await
    }

    /// Whether the server closed the connection (read without blocking).
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        loop {
            match self.client.sock.try_read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    }
}
