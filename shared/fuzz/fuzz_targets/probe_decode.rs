//! The probe datagram decoder on arbitrary bytes: never panics; a parsed
//! packet re-encodes and authenticates under the key it was signed with.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vantage_shared::probe::{KeySlot, Packet, ProbeKey, ProbeKeys};

fuzz_target!(|data: &[u8]| {
    let Some(key) = ProbeKey::new(b"fuzz-probe-key-0123456789abcdef") else {
        return;
    };
    let keys = ProbeKeys::new(Some(key.clone()));
    let _ = Packet::decode(data, &keys);
    if let Ok(p) = Packet::parse(data) {
        let wire = p.encode(&key);
        assert_eq!(Packet::decode(&wire, &keys), Ok((p, KeySlot::Current)));
    }
});
