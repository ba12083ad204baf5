//! The CMCD parsers (text, query value, headers, JSON) on arbitrary input:
//! never panic, and whatever they accept encodes to text they accept again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vantage_shared::cmcd;

fuzz_target!(|data: &[u8]| {
    let _ = cmcd::parse_headers([("CMCD-Request", data), ("CMCD-Session", data)]);
    if let Ok(list) = cmcd::parse_json(data) {
        for p in list {
            let _ = p.cmcd.encode();
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = cmcd::parse_query(text);
    let _ = cmcd::parse_query_value(text);
    if let Ok(p) = cmcd::parse(text) {
        let encoded = p.cmcd.encode();
        let _ = cmcd::parse_query_value(&p.cmcd.encode_query_value());
        if let Ok(again) = cmcd::parse(&encoded) {
            // Everything the parser produced it can read back, and the
            // text form is stable after one round.
            assert_eq!(again.cmcd.encode(), encoded);
        }
    }
});
