use super::chunk::{Header, encode};
use super::message::*;
use super::*;
use crate::flv::amf::Value;
use crate::flv::{Tag, TagKind};
use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

fn decode_all(d: &mut ChunkDecoder, wire: &[u8], step: usize) -> Result<Vec<Message>, RtmpError> {
    let mut out = Vec::new();
    for c in wire.chunks(step.max(1)) {
        d.push(c);
        while let Some(m) = d.next_message()? {
            out.push(m);
        }
    }
    Ok(out)
}

fn video_header(ts: u32) -> Header {
    Header {
        csid: CSID_VIDEO,
        timestamp: ts,
        type_id: VIDEO,
        stream_id: 1,
    }
}

#[test]
fn messages_round_trip_through_chunks_of_any_size() {
    let body: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    for chunk_size in [1, 128, 999, 1000, 4096] {
        let mut wire = BytesMut::new();
        if chunk_size != 128 {
            wire.extend_from_slice(&set_chunk_size(chunk_size, 128));
        }
        for ts in [0, 40, 0x00FF_FFFF, 0x0100_0000] {
            chunk::encode_message(&video_header(ts), &body, chunk_size, &mut wire);
        }
        for step in [1, 7, 4096] {
            let mut d = ChunkDecoder::new(Limits::default());
            let msgs = decode_all(&mut d, &wire, step).unwrap();
            let media: Vec<&Message> = msgs.iter().filter(|m| m.type_id == VIDEO).collect();
            assert_eq!(media.len(), 4, "chunk size {chunk_size}, step {step}");
            for (m, ts) in media.iter().zip([0, 40, 0x00FF_FFFF, 0x0100_0000]) {
                assert_eq!(m.timestamp, ts);
                assert_eq!(m.stream_id, 1);
                assert_eq!(&m.payload[..], &body[..]);
            }
            assert_eq!(d.chunk_size(), chunk_size);
            assert_eq!(d.buffered(), 0);
        }
    }
}

#[test]
fn compressed_headers_carry_deltas() {
    // fmt 0 at 1000, fmt 1 (+40, new length), fmt 2 (+40), fmt 3 (+40 again).
    let mut w = vec![0x06];
    w.extend_from_slice(&[0, 0x03, 0xE8, 0, 0, 2, 9, 1, 0, 0, 0, 0xAA, 0xBB]);
    w.extend_from_slice(&[0x46, 0, 0, 40, 0, 0, 1, 9, 0xCC]);
    w.extend_from_slice(&[0x86, 0, 0, 40, 0xDD]);
    w.extend_from_slice(&[0xC6, 0xEE]);
    let mut d = ChunkDecoder::new(Limits::default());
    let msgs = decode_all(&mut d, &w, 3).unwrap();
    let ts: Vec<u32> = msgs.iter().map(|m| m.timestamp).collect();
    assert_eq!(ts, [1000, 1040, 1080, 1120]);
    assert_eq!(&msgs[1].payload[..], &[0xCC]);
    assert_eq!(&msgs[3].payload[..], &[0xEE]);
    assert!(msgs.iter().all(|m| m.stream_id == 1));
}

#[test]
fn limits_refuse_hostile_input() {
    let lim = Limits {
        max_chunk_size: 4096,
        max_message_len: 1000,
        max_chunk_streams: 4,
        max_buffered: 2500,
    };
    // A chunk size above the limit.
    let mut d = ChunkDecoder::new(lim);
    let e = decode_all(&mut d, &set_chunk_size(0x7FFF_FFFF, 128), 64).unwrap_err();
    assert_eq!(e.label(), "bad_chunk_size");
    assert!(d.next_message().is_err(), "errors are final");
    // Zero is no chunk size either.
    let mut d = ChunkDecoder::new(lim);
    assert!(decode_all(&mut d, &set_chunk_size(0, 128), 64).is_err());
    // A declared length above the limit, refused before the bytes come.
    let mut d = ChunkDecoder::new(lim);
    let head = [0x06, 0, 0, 0, 0x10, 0, 0, 9, 1, 0, 0, 0];
    assert_eq!(
        decode_all(&mut d, &head, 64).unwrap_err().label(),
        "message_too_large"
    );
    // Many chunk streams.
    let mut d = ChunkDecoder::new(lim);
    let mut w = BytesMut::new();
    for csid in 3..10 {
        let h = Header {
            csid,
            ..video_header(0)
        };
        // The first chunk of a longer message each: state stays.
        let full = encode(&h, &[0u8; 600], 128);
        w.extend_from_slice(&full[..12 + 128]);
    }
    assert_eq!(
        decode_all(&mut d, &w, 64).unwrap_err().label(),
        "too_many_chunk_streams"
    );
    // Partial messages over the byte budget.
    let mut d = ChunkDecoder::new(Limits {
        max_chunk_streams: 8,
        ..lim
    });
    let mut w = BytesMut::from(&set_chunk_size(700, 128)[..]);
    for csid in 3..7 {
        let h = Header {
            csid,
            ..video_header(0)
        };
        let full = encode(&h, &[0u8; 1000], 700);
        w.extend_from_slice(&full[..712]);
    }
    assert_eq!(
        decode_all(&mut d, &w, 64).unwrap_err().label(),
        "too_much_buffered"
    );
    // A continuation on a chunk stream never opened.
    let mut d = ChunkDecoder::new(lim);
    assert_eq!(
        decode_all(&mut d, &[0xC5, 1, 2, 3], 1).unwrap_err().label(),
        "bad_chunk_header"
    );
}

#[test]
fn abort_drops_a_partial_message() {
    let mut w = BytesMut::new();
    let full = encode(&video_header(0), &[7u8; 300], 128);
    w.extend_from_slice(&full[..140]);
    let mut abort = BytesMut::new();
    chunk::encode_message(
        &Header {
            csid: 2,
            timestamp: 0,
            type_id: ABORT,
            stream_id: 0,
        },
        &u32::from(CSID_VIDEO).to_be_bytes(),
        128,
        &mut abort,
    );
    w.extend_from_slice(&abort);
    let mut d = ChunkDecoder::new(Limits::default());
    let msgs = decode_all(&mut d, &w, 16).unwrap();
    assert_eq!(msgs.len(), 1, "only the abort itself");
    assert_eq!(d.buffered(), 0);
}

#[test]
fn commands_parse_and_encode() {
    let c = Command {
        name: "connect".into(),
        transaction: 1.0,
        object: object(&[("app", string("live")), ("tcUrl", string("rtmp://h/live"))]),
        args: vec![],
    };
    let wire = c.encode(0, 128);
    let mut d = ChunkDecoder::new(Limits::default());
    let m = decode_all(&mut d, &wire, 5).unwrap().pop().unwrap();
    assert_eq!(m.type_id, COMMAND_AMF0);
    let back = Command::parse(&m.payload, m.type_id).unwrap();
    assert_eq!(back, c);
    assert_eq!(back.property("app").and_then(Value::as_str), Some("live"));
    // AMF3-wrapped command: one leading format byte.
    let mut p = vec![0u8];
    p.extend_from_slice(&c.payload());
    assert_eq!(Command::parse(&p, COMMAND_AMF3).unwrap(), c);
    // Not a command.
    assert!(Command::parse(&[0x00, 0, 0, 0, 0, 0, 0, 0, 0], COMMAND_AMF0).is_err());
    assert_eq!(
        Command::parse(&[0x7f], COMMAND_AMF0).unwrap_err().label(),
        "bad_amf"
    );
}

#[test]
fn an_amf_bomb_is_refused_cheaply() {
    // 10,000 nested objects: refused at the depth limit.
    let mut p = vec![0x02, 0, 4];
    p.extend_from_slice(b"play");
    p.extend_from_slice(&[0x00; 9]);
    for _ in 0..10_000 {
        p.extend_from_slice(&[0x03, 0, 1, b'a']);
    }
    assert_eq!(
        Command::parse(&p, COMMAND_AMF0).unwrap_err().label(),
        "bad_amf"
    );
    // A strict array claiming 4 billion elements.
    let mut p = vec![0x02, 0, 4];
    p.extend_from_slice(b"play");
    p.extend_from_slice(&[0x00; 9]);
    p.extend_from_slice(&[0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x05]);
    assert!(Command::parse(&p, COMMAND_AMF0).is_err());
}

#[test]
fn media_messages_map_to_flv_tags_and_back() {
    let m = Message {
        csid: 6,
        timestamp: 1234,
        type_id: VIDEO,
        stream_id: 1,
        payload: Bytes::from_static(&[0x17, 1, 0, 0, 0, 9, 9]),
    };
    let tag = to_tag(&m).unwrap();
    assert!(tag.is_coded_keyframe());
    assert_eq!(tag.timestamp_ms, 1234);
    let wire = flv_to_chunks(&tag.encode(), 1, 4096).unwrap();
    let mut d = ChunkDecoder::new(Limits::default());
    let back = decode_all(&mut d, &wire, 3).unwrap().pop().unwrap();
    assert_eq!(
        (back.type_id, back.timestamp, back.payload),
        (VIDEO, 1234, m.payload)
    );

    // @setDataFrame is stripped from metadata.
    let mut p = BytesMut::new();
    crate::flv::amf::write_value(&mut p, &string("@setDataFrame"));
    p.extend_from_slice(&crate::flv::amf::metadata_body(&[(
        "width".into(),
        num(320.0),
    )]));
    let meta = Message {
        type_id: DATA_AMF0,
        payload: p.freeze(),
        ..m
    };
    let tag = to_tag(&meta).unwrap();
    assert!(tag.is_metadata());
    assert!(tag.body.starts_with(b"\x02\x00\x0aonMetaData"));
}

#[test]
fn aggregates_split_into_tags() {
    let mut p = BytesMut::new();
    Tag::new(TagKind::Video, 100, Bytes::from_static(&[0x17, 1, 0, 0, 0])).encode_into(&mut p);
    Tag::new(TagKind::Audio, 120, Bytes::from_static(&[0xAF, 1, 5])).encode_into(&mut p);
    let m = Message {
        csid: 6,
        timestamp: 5000,
        type_id: AGGREGATE,
        stream_id: 1,
        payload: p.freeze(),
    };
    let tags = split_aggregate(&m).unwrap();
    assert_eq!(tags.len(), 2);
    assert_eq!((tags[0].timestamp_ms, tags[1].timestamp_ms), (5000, 5020));
    assert!(tags[1].is_audio());
    let cut = Message {
        payload: m.payload.slice(..m.payload.len() - 2),
        ..m
    };
    assert!(split_aggregate(&cut).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes in arbitrary pieces: no panic, bounded memory, and
    /// the decoder keeps failing once failed.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096),
                                   step in 1usize..300) {
        let lim = Limits { max_chunk_size: 4096, max_message_len: 2048, max_chunk_streams: 8, max_buffered: 8192 };
        let mut d = ChunkDecoder::new(lim);
        let mut failed = false;
        for c in data.chunks(step) {
            d.push(c);
            loop {
                match d.next_message() {
                    Ok(Some(m)) => {
                        prop_assert!(!failed);
                        prop_assert!(m.payload.len() <= 2048);
                        let _ = Command::parse(&m.payload, m.type_id);
                        let _ = to_tag(&m);
                        let _ = split_aggregate(&m);
                        let _ = parse_user_control(&m.payload);
                    }
                    Ok(None) => break,
                    Err(_) => { failed = true; break; }
                }
            }
            prop_assert!(d.buffered() <= 8192 + step + 4096 + 20);
        }
    }

    /// Any sequence of messages, any chunk size, any read sizes: the same
    /// messages come out, whole and in order.
    #[test]
    fn encoded_messages_decode_to_themselves(
        msgs in proptest::collection::vec(
            (2u8..64, any::<u32>(), prop_oneof![Just(8u8), Just(9u8), Just(20u8)],
             proptest::collection::vec(any::<u8>(), 0..600)), 1..12),
        chunk_size in 1u32..1000, step in 1usize..500) {
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&set_chunk_size(chunk_size, 128));
        for (csid, ts, ty, body) in &msgs {
            let h = Header { csid: *csid, timestamp: *ts, type_id: *ty, stream_id: 1 };
            chunk::encode_message(&h, body, chunk_size, &mut wire);
        }
        let mut d = ChunkDecoder::new(Limits::default());
        let out = decode_all(&mut d, &wire, step).unwrap();
        prop_assert_eq!(out.len(), msgs.len() + 1);
        for (m, (csid, ts, ty, body)) in out[1..].iter().zip(&msgs) {
            prop_assert_eq!(m.csid, u32::from(*csid));
            prop_assert_eq!(m.timestamp, *ts);
            prop_assert_eq!(m.type_id, *ty);
            prop_assert_eq!(&m.payload[..], &body[..]);
        }
    }
}
