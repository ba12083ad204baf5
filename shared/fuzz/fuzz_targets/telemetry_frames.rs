//! The scheduler's telemetry input on arbitrary bytes, in arbitrary
//! chunks: the incremental frame reader and the report/alert validation
//! never panic; a frame that decodes re-encodes to a frame that decodes to
//! the same message (the same bytes again); an error ends the stream (as the session does).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vantage_proto::v1::{TelemetryFrame, telemetry_frame};
use vantage_shared::frame::{self, FrameReader};
use vantage_shared::validate;

/// The scheduler's limit for telemetry frames is larger; a small one here
/// reaches the size check with short inputs.
const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut reader = FrameReader::default();
    for piece in bytes.chunks(chunk) {
        reader.push(piece);
        loop {
            match reader.next::<TelemetryFrame>(MAX) {
                Ok(Some((f, len))) => {
                    assert!(len <= MAX);
                    match &f.kind {
                        Some(telemetry_frame::Kind::Report(r)) => {
                            let _ = validate::report(r);
                        }
                        Some(telemetry_frame::Kind::Alert(a)) => {
                            let _ = validate::alert(a);
                        }
                        None => {}
                    }
                    // Compared as bytes: a NaN field is not equal to itself.
                    let wire = frame::encode(&f);
                    let mut again = FrameReader::default();
                    again.push(&wire);
                    match again.next::<TelemetryFrame>(usize::MAX) {
                        Ok(Some((g, _))) => assert_eq!(frame::encode(&g), wire),
                        other => panic!("re-encoded frame: {other:?}"),
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = reader.finish();
});
