//! The UDP probe packet (TWAMP-light style), pure: encoding, decoding and
//! authentication. The agent's prober and responder (`agent/src/probe`) do
//! the I/O; `docs/measurement.md` describes the protocol.
//!
//! Every datagram is exactly [`PACKET_LEN`] (72) bytes, big-endian:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `"VPRB"` |
//! | 4 | 1 | version (1) |
//! | 5 | 1 | kind: 1 = request, 2 = reply |
//! | 6 | 2 | reserved, 0 (covered by the tag) |
//! | 8 | 8 | sequence number, chosen by the sender, echoed |
//! | 16 | 8 | sender tag: first 8 bytes of SHA-256(sender node id) |
//! | 24 | 8 | reflector tag (0 in requests) |
//! | 32 | 8 | T1: sender send time, µs of the sender's monotonic clock |
//! | 40 | 8 | T2: reflector receive time, µs of the reflector's clock (0 in requests) |
//! | 48 | 8 | T3: reflector send time, µs of the reflector's clock (0 in requests) |
//! | 56 | 16 | HMAC-SHA256(probe key, bytes 0..56), first 16 bytes |
//!
//! A reply is never larger than the request it answers (no amplification).
//! The key is the cluster's `probe_key` from the route table; [`ProbeKeys`]
//! also accepts the previous key so a key rotation does not blackhole probes
//! while tables propagate.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Size of every probe datagram.
pub const PACKET_LEN: usize = 72;
/// First bytes of every probe datagram.
pub const MAGIC: [u8; 4] = *b"VPRB";
/// Protocol version spoken by this code.
pub const VERSION: u8 = 1;
/// Bytes covered by the authenticator.
pub const HEADER_LEN: usize = 56;
/// Length of the truncated HMAC-SHA256 tag.
pub const TAG_LEN: usize = PACKET_LEN - HEADER_LEN;

type HmacSha256 = Hmac<Sha256>;

/// Request or reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Request = 1,
    Reply = 2,
}

/// Short, stable identifier of a node on the wire: the first 8 bytes of
/// SHA-256 of its node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NodeTag(pub [u8; 8]);

impl NodeTag {
    pub fn of(node_id: &str) -> NodeTag {
        let digest = Sha256::digest(node_id.as_bytes());
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&digest[..8]);
        NodeTag(tag)
    }
}

/// One probe datagram, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub kind: Kind,
    pub seq: u64,
    pub sender: NodeTag,
    pub reflector: NodeTag,
    /// Sender send time (µs, sender's monotonic clock).
    pub t1_us: u64,
    /// Reflector receive time (µs, reflector's monotonic clock).
    pub t2_us: u64,
    /// Reflector send time (µs, reflector's monotonic clock).
    pub t3_us: u64,
}

impl Packet {
    /// A request from `sender` sent at `t1_us`.
    pub fn request(seq: u64, sender: NodeTag, t1_us: u64) -> Packet {
        Packet {
            kind: Kind::Request,
            seq,
            sender,
            reflector: NodeTag::default(),
            t1_us,
            t2_us: 0,
            t3_us: 0,
        }
    }

    /// The reply to this request: everything echoed, the reflector's tag
    /// and timestamps filled in.
    pub fn reply(&self, reflector: NodeTag, t2_us: u64, t3_us: u64) -> Packet {
        Packet {
            kind: Kind::Reply,
            reflector,
            t2_us,
            t3_us,
            ..*self
        }
    }

    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = VERSION;
        h[5] = self.kind as u8;
        h[8..16].copy_from_slice(&self.seq.to_be_bytes());
        h[16..24].copy_from_slice(&self.sender.0);
        h[24..32].copy_from_slice(&self.reflector.0);
        h[32..40].copy_from_slice(&self.t1_us.to_be_bytes());
        h[40..48].copy_from_slice(&self.t2_us.to_be_bytes());
        h[48..56].copy_from_slice(&self.t3_us.to_be_bytes());
        h
    }

    /// The datagram, authenticated with `key`.
    pub fn encode(&self, key: &ProbeKey) -> [u8; PACKET_LEN] {
        let header = self.header();
        let mut out = [0u8; PACKET_LEN];
        out[..HEADER_LEN].copy_from_slice(&header);
        out[HEADER_LEN..].copy_from_slice(&key.tag(&header));
        out
    }

    /// Parses and authenticates a datagram. Never panics; every malformed
    /// input is a [`DecodeError`]. Returns which key matched, so a reply can
    /// be signed with the key its request was signed with.
    pub fn decode(buf: &[u8], keys: &ProbeKeys) -> Result<(Packet, KeySlot), DecodeError> {
        let packet = Self::parse(buf)?;
        let (header, tag) = buf.split_at(HEADER_LEN);
        keys.verify(header, tag).map(|slot| (packet, slot))
    }

    /// Parses a datagram without checking its tag (for tests and tools;
    /// the agent never acts on an unauthenticated packet).
    pub fn parse(buf: &[u8]) -> Result<Packet, DecodeError> {
        if buf.len() < PACKET_LEN {
            return Err(DecodeError::Short { len: buf.len() });
        }
        if buf.len() > PACKET_LEN {
            return Err(DecodeError::Long { len: buf.len() });
        }
        if buf[0..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if buf[4] != VERSION {
            return Err(DecodeError::BadVersion(buf[4]));
        }
        let kind = match buf[5] {
            1 => Kind::Request,
            2 => Kind::Reply,
            k => return Err(DecodeError::BadKind(k)),
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[at..at + 8]);
            b
        };
        Ok(Packet {
            kind,
            seq: u64::from_be_bytes(u64_at(8)),
            sender: NodeTag(u64_at(16)),
            reflector: NodeTag(u64_at(24)),
            t1_us: u64::from_be_bytes(u64_at(32)),
            t2_us: u64::from_be_bytes(u64_at(40)),
            t3_us: u64::from_be_bytes(u64_at(48)),
        })
    }
}

/// Why a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("datagram of {len} bytes is shorter than {PACKET_LEN}")]
    Short { len: usize },
    #[error("datagram of {len} bytes is longer than {PACKET_LEN}")]
    Long { len: usize },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported version {0}")]
    BadVersion(u8),
    #[error("unknown kind {0}")]
    BadKind(u8),
    #[error("authenticator does not match any probe key")]
    BadTag,
}

impl DecodeError {
    /// Metric label (`vantage_agent_probe_dropped_total{reason}`).
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::Short { .. } => "short",
            DecodeError::Long { .. } => "long",
            DecodeError::BadMagic => "magic",
            DecodeError::BadVersion(_) => "version",
            DecodeError::BadKind(_) => "kind",
            DecodeError::BadTag => "auth",
        }
    }
}

/// A probe key with its HMAC state precomputed.
#[derive(Clone)]
pub struct ProbeKey {
    raw: Vec<u8>,
    mac: HmacSha256,
}

impl std::fmt::Debug for ProbeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeKey(..)")
    }
}

impl PartialEq for ProbeKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.raw.len() == other.raw.len() && bool::from(self.raw.ct_eq(&other.raw))
    }
}

impl ProbeKey {
    /// `None` for an empty key: a table without a key disables probing.
    pub fn new(raw: &[u8]) -> Option<ProbeKey> {
        if raw.is_empty() {
            return None;
        }
        // HMAC takes keys of any length; the error arm is unreachable.
        let mac = HmacSha256::new_from_slice(raw).ok()?;
        Some(ProbeKey {
            raw: raw.to_vec(),
            mac,
        })
    }

    fn tag(&self, header: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(header);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    fn verify(&self, header: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(header);
        // Constant-time comparison of the truncated tag.
        mac.verify_truncated_left(tag).is_ok()
    }
}

/// Which of the held keys authenticated a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySlot {
    Current,
    Previous,
}

/// The key in force and the one before it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeKeys {
    current: Option<ProbeKey>,
    previous: Option<ProbeKey>,
}

impl ProbeKeys {
    pub fn new(current: Option<ProbeKey>) -> ProbeKeys {
        ProbeKeys {
            current,
            previous: None,
        }
    }

    /// Makes `raw` the current key; the old current key becomes the previous
    /// one. The same key again changes nothing. Returns whether it rotated.
    pub fn rotate(&mut self, raw: &[u8]) -> bool {
        let Some(new) = ProbeKey::new(raw) else {
            return false;
        };
        if self.current.as_ref() == Some(&new) {
            return false;
        }
        self.previous = self.current.replace(new);
        true
    }

    pub fn current(&self) -> Option<&ProbeKey> {
        self.current.as_ref()
    }

    pub fn get(&self, slot: KeySlot) -> Option<&ProbeKey> {
        match slot {
            KeySlot::Current => self.current.as_ref(),
            KeySlot::Previous => self.previous.as_ref(),
        }
    }

    fn verify(&self, header: &[u8], tag: &[u8]) -> Result<KeySlot, DecodeError> {
        if self.current.as_ref().is_some_and(|k| k.verify(header, tag)) {
            return Ok(KeySlot::Current);
        }
        if self
            .previous
            .as_ref()
            .is_some_and(|k| k.verify(header, tag))
        {
            return Ok(KeySlot::Previous);
        }
        Err(DecodeError::BadTag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(raw: &[u8]) -> ProbeKeys {
        ProbeKeys::new(ProbeKey::new(raw))
    }

    fn sample() -> Packet {
        Packet::request(42, NodeTag::of("edge-1"), 1_234_567)
    }

    #[test]
    fn request_and_reply_round_trip() {
        let k = keys(b"cluster secret");
        let req = sample();
        let bytes = req.encode(k.current().unwrap());
        assert_eq!(bytes.len(), PACKET_LEN);
        assert_eq!(&bytes[..4], b"VPRB");
        let (got, slot) = Packet::decode(&bytes, &k).unwrap();
        assert_eq!((got, slot), (req, KeySlot::Current));

        let reply = got.reply(NodeTag::of("edge-2"), 10, 12);
        let (back, _) = Packet::decode(&reply.encode(k.current().unwrap()), &k).unwrap();
        assert_eq!(back.kind, Kind::Reply);
        assert_eq!(back.seq, 42);
        assert_eq!(back.sender, NodeTag::of("edge-1"));
        assert_eq!(back.reflector, NodeTag::of("edge-2"));
        assert_eq!((back.t1_us, back.t2_us, back.t3_us), (1_234_567, 10, 12));
    }

    #[test]
    fn typed_errors() {
        let k = keys(b"k");
        let good = sample().encode(k.current().unwrap());
        let err = |b: &[u8]| Packet::decode(b, &k).unwrap_err();
        assert_eq!(err(&good[..10]), DecodeError::Short { len: 10 });
        assert_eq!(err(&[]), DecodeError::Short { len: 0 });
        let mut long = good.to_vec();
        long.push(0);
        assert_eq!(err(&long), DecodeError::Long { len: 73 });
        let mut b = good;
        b[0] = b'X';
        assert_eq!(err(&b), DecodeError::BadMagic);
        let mut b = good;
        b[4] = 2;
        assert_eq!(err(&b), DecodeError::BadVersion(2));
        let mut b = good;
        b[5] = 9;
        assert_eq!(err(&b), DecodeError::BadKind(9));
        let mut b = good;
        b[20] ^= 1;
        assert_eq!(err(&b), DecodeError::BadTag);
        let mut b = good;
        b[71] ^= 0x80;
        assert_eq!(err(&b), DecodeError::BadTag);
        // Another cluster's key, and no key at all.
        assert_eq!(
            Packet::decode(&good, &keys(b"other")).unwrap_err(),
            DecodeError::BadTag
        );
        assert_eq!(
            Packet::decode(&good, &ProbeKeys::default()).unwrap_err(),
            DecodeError::BadTag
        );
        assert_eq!(err(&b).label(), "auth");
        assert_eq!(DecodeError::Short { len: 0 }.label(), "short");
    }

    #[test]
    fn previous_key_is_accepted_after_rotation() {
        let mut k = keys(b"old");
        let signed_old = sample().encode(k.current().unwrap());
        assert!(k.rotate(b"new"));
        assert!(!k.rotate(b"new"), "same key again is not a rotation");
        assert!(!k.rotate(b""), "an empty key is ignored");
        assert_eq!(
            Packet::decode(&signed_old, &k).unwrap().1,
            KeySlot::Previous
        );
        let signed_new = sample().encode(k.current().unwrap());
        assert_eq!(Packet::decode(&signed_new, &k).unwrap().1, KeySlot::Current);
        // Two rotations later the oldest key is gone.
        assert!(k.rotate(b"newer"));
        assert_eq!(
            Packet::decode(&signed_old, &k).unwrap_err(),
            DecodeError::BadTag
        );
    }

    #[test]
    fn empty_key_is_no_key() {
        assert!(ProbeKey::new(b"").is_none());
        assert_ne!(NodeTag::of("a"), NodeTag::of("b"));
        assert_eq!(NodeTag::of("a"), NodeTag::of("a"));
    }

    fn packet() -> impl Strategy<Value = Packet> {
        (
            any::<bool>(),
            any::<u64>(),
            any::<[u8; 8]>(),
            any::<[u8; 8]>(),
            any::<(u64, u64, u64)>(),
        )
            .prop_map(|(req, seq, s, r, (t1, t2, t3))| Packet {
                kind: if req { Kind::Request } else { Kind::Reply },
                seq,
                sender: NodeTag(s),
                reflector: NodeTag(r),
                t1_us: t1,
                t2_us: t2,
                t3_us: t3,
            })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let k = keys(b"key");
            let r = Packet::decode(&bytes, &k);
            prop_assert!(r.is_err(), "random bytes must not authenticate");
            let _ = Packet::parse(&bytes);
        }

        #[test]
        fn valid_header_with_random_body_never_panics(body in any::<[u8; 68]>()) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&body);
            let r = Packet::decode(&bytes, &keys(b"key"));
            prop_assert!(r.is_err());
        }

        #[test]
        fn round_trip(p in packet(), key in prop::collection::vec(any::<u8>(), 1..64)) {
            let k = keys(&key);
            let bytes = p.encode(k.current().unwrap());
            let (back, slot) = Packet::decode(&bytes, &k).unwrap();
            prop_assert_eq!(back, p);
            prop_assert_eq!(slot, KeySlot::Current);
        }

        #[test]
        fn any_flipped_bit_is_refused(p in packet(), bit in 0usize..(PACKET_LEN * 8)) {
            let k = keys(b"key");
            let mut bytes = p.encode(k.current().unwrap());
            bytes[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(Packet::decode(&bytes, &k).is_err());
        }
    }
}
