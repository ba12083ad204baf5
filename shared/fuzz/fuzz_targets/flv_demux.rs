//! The FLV demuxer on arbitrary bytes in arbitrary chunking: never panics,
//! and every tag it returns re-encodes to a stream that demuxes to the same
//! tags.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vantage_shared::flv::{Demuxer, amf};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut d = Demuxer::new(64 * 1024);
    let mut tags = Vec::new();
    for c in data.chunks(chunk) {
        d.push(c);
        while let Ok(Some(t)) = d.next_tag() {
            let _ = (
                t.is_keyframe(),
                t.is_coded_keyframe(),
                t.is_sequence_header(),
                t.is_end_of_sequence(),
                t.is_metadata(),
                t.video_codec(),
                t.video_fourcc(),
                t.sound_format(),
                t.composition_time_ms(),
            );
            let _ = amf::Metadata::parse(&t.body);
            tags.push(t);
        }
    }
    let _ = d.finish();
    let Some(header) = d.header() else {
        return;
    };
    // Re-mux what was read (data offset normalised to 9) and read it back.
    let mut wire = header.encode().to_vec();
    for t in &tags {
        wire.extend_from_slice(&t.encode());
    }
    let mut again = Demuxer::new(64 * 1024);
    again.push(&wire);
    for t in &tags {
        let back = again.next_tag();
        assert_eq!(back.as_ref(), Ok(&Some(t.clone())));
    }
    assert_eq!(again.finish(), Ok(()));
});
