use super::*;
use proptest::prelude::*;

const SID: &str = "6e2fb550-c457-11e9-bb97-0800200c9a66";
const CID: &str = "faec5fc2-ac30-11ea-bb37-0242ac130002";

/// Every key of the spec's "all keys" example.
fn all_keys() -> Cmcd {
    Cmcd {
        br: Some(3200),
        bl: Some(21300),
        bs: Some(true),
        cid: Some(CID.into()),
        d: Some(4004),
        dl: Some(18500),
        mtp: Some(48100),
        nor: Some("..%2F300kbps%2Ftrack.m4v".into()),
        nrr: Some("12323-48763".into()),
        ot: Some(ObjectType::Video),
        pr: Some(1.08),
        rtp: Some(12000),
        sf: Some(StreamingFormat::Dash),
        sid: Some(SID.into()),
        st: Some(StreamType::Vod),
        su: Some(true),
        tb: Some(6000),
        v: None,
        unknown: BTreeMap::new(),
    }
}

fn kinds(p: &Parsed) -> Vec<(&str, &KeyErrorKind)> {
    p.warnings
        .iter()
        .map(|w| (w.key.as_str(), &w.kind))
        .collect()
}

#[test]
fn spec_query_example() {
    let q = "CMCD=bl%3D21300%2Cbr%3D3200%2Cbs%2Cd%3D4004%2Cmtp%3D25400%2Cot%3Dv%2Crtp%3D15000%2Csid%3D%226e2fb550-c457-11e9-bb97-0800200c9a66%22%2Ctb%3D6000";
    let p = parse_query(q).unwrap().unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let c = p.cmcd;
    assert_eq!(c.bl, Some(21300));
    assert_eq!(c.br, Some(3200));
    assert_eq!(c.bs, Some(true));
    assert_eq!(c.d, Some(4004));
    assert_eq!(c.mtp, Some(25400));
    assert_eq!(c.ot, Some(ObjectType::Video));
    assert_eq!(c.rtp, Some(15000));
    assert_eq!(c.sid.as_deref(), Some(SID));
    assert_eq!(c.tb, Some(6000));
    assert!(c.unknown.is_empty());
    // Same with a leading `?` and other parameters around it.
    let p2 = parse_query(&format!("?lat=1&{q}&lon=2")).unwrap().unwrap();
    assert_eq!(p2.cmcd, c);
}

#[test]
fn spec_all_keys_query_example() {
    let q = "?CMCD=bl%3D21300%2Cbr%3D3200%2Cbs%2Ccid%3D%22faec5fc2-ac30-11ea-bb37-0242ac130002%22%2Cd%3D4004%2Cdl%3D18500%2Cmtp%3D48100%2Cnor%3D%22..%252F300kbps%252Ftrack.m4v%22%2Cnrr%3D%2212323-48763%22%2Cot%3Dv%2Cpr%3D1.08%2Crtp%3D12000%2Csf%3Dd%2Csid%3D%226e2fb550-c457-11e9-bb97-0800200c9a66%22%2Cst%3Dv%2Csu%2Ctb%3D6000";
    let p = parse_query(q).unwrap().unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(p.cmcd, all_keys());
}

#[test]
fn spec_header_example() {
    let headers: Vec<(&str, &[u8])> = vec![
        ("content-type", b"video/x-flv"),
        (
            "CMCD-Request",
            br#"bl=21300,dl=18500,mtp=48100,nor="..%2F300kbps%2Ftrack.m4v",nrr="12323-48763",su"#,
        ),
        ("cmcd-object", b"br=3200,d=4004,ot=v,tb=6000"),
        ("Cmcd-Status", b"bs,rtp=12000"),
        (
            "CMCD-Session",
            br#"cid="faec5fc2-ac30-11ea-bb37-0242ac130002",pr=1.08,sf=d,sid="6e2fb550-c457-11e9-bb97-0800200c9a66",st=v"#,
        ),
    ];
    let p = parse_headers(headers).unwrap().unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(p.cmcd, all_keys());
    let none: Vec<(&str, &[u8])> = vec![("accept", b"*/*")];
    assert_eq!(parse_headers(none).unwrap(), None);
}

#[test]
fn spec_json_example() {
    let body = format!(
        r#"{{"bl":21300,"br":3200,"bs":true,"cid":"{CID}","d":4004,"dl":18500,"mtp":48100,
            "nor":"..%2F300kbps%2Ftrack.m4v","nrr":"12323-48763","ot":"v","pr":1.08,"rtp":12000,
            "sf":"d","sid":"{SID}","st":"v","su":true,"tb":6000}}"#
    );
    let p = parse_json(body.as_bytes()).unwrap();
    assert_eq!(p.len(), 1);
    assert!(p[0].warnings.is_empty(), "{:?}", p[0].warnings);
    assert_eq!(p[0].cmcd, all_keys());
    // An array of beacons; bad values warn per key.
    let batch =
        br#"[{"bl":100,"sid":"a"},{"bl":-1,"bs":"yes","x-custom":[1],"mtp":2.5,"com.ex-n":7}]"#;
    let p = parse_json(batch).unwrap();
    assert_eq!(p[0].cmcd.bl, Some(100));
    assert_eq!(p[1].cmcd.bl, None);
    assert_eq!(p[1].cmcd.unknown.get("com.ex-n"), Some(&Value::Integer(7)));
    assert_eq!(
        kinds(&p[1]),
        vec![
            ("bl", &KeyErrorKind::Negative),
            ("bs", &KeyErrorKind::ExpectedBoolean),
            ("mtp", &KeyErrorKind::ExpectedInteger),
            ("x-custom", &KeyErrorKind::Syntax("nested value")),
        ]
    );
    assert!(matches!(parse_json(b"{"), Err(CmcdError::Json(_))));
    assert!(matches!(parse_json(b"42"), Err(CmcdError::Json(_))));
    assert!(matches!(parse_json(b"[1]"), Err(CmcdError::Json(_))));
    let many = format!("[{}]", vec!["{}"; MAX_JSON_OBJECTS + 1].join(","));
    assert_eq!(
        parse_json(many.as_bytes()),
        Err(CmcdError::TooManyObjects {
            max: MAX_JSON_OBJECTS
        })
    );
}

#[test]
fn bad_values_warn_per_key_and_the_rest_is_kept() {
    let long = "x".repeat(MAX_ID_LEN + 1);
    let text = format!(
        r#"bl=-5,br=abc,ot=x,sid="{long}",nrr="abc",bs=5,pr=1.2.3,mtp=1000,d=,st=l,su=?0,sf=h,dl=1.5"#
    );
    let p = parse(&text).unwrap();
    assert_eq!(p.cmcd.mtp, Some(1000));
    assert_eq!(p.cmcd.st, Some(StreamType::Live));
    assert_eq!(p.cmcd.su, Some(false));
    assert_eq!(p.cmcd.sf, Some(StreamingFormat::Hls));
    assert_eq!(
        kinds(&p),
        vec![
            ("bl", &KeyErrorKind::Negative),
            ("br", &KeyErrorKind::ExpectedInteger),
            ("ot", &KeyErrorKind::UnknownToken("x".into())),
            (
                "sid",
                &KeyErrorKind::TooLong {
                    len: MAX_ID_LEN + 1,
                    max: MAX_ID_LEN
                }
            ),
            ("nrr", &KeyErrorKind::BadRange),
            ("bs", &KeyErrorKind::ExpectedBoolean),
            ("pr", &KeyErrorKind::Syntax("bad number")),
            ("d", &KeyErrorKind::Syntax("empty value")),
            ("dl", &KeyErrorKind::ExpectedInteger),
        ]
    );
    assert_eq!(
        p.warnings[0].to_string(),
        r#"CMCD key "bl": negative value"#
    );
    assert_eq!(p.warnings[1].kind.label(), "bad_type");
}

#[test]
fn syntax_errors_skip_one_member() {
    // Garbage after a value, a bad key, an unterminated string at the end.
    let p = parse(r#"bl=100 x,=3,9a=1,mtp=200,sid="a\"b\\c",cid="open"#).unwrap();
    assert_eq!(p.cmcd.mtp, Some(200));
    assert_eq!(p.cmcd.sid.as_deref(), Some(r#"a"b\c"#));
    assert_eq!(p.cmcd.bl, None);
    assert_eq!(
        kinds(&p),
        vec![
            ("bl", &KeyErrorKind::Syntax("garbage after the value")),
            ("", &KeyErrorKind::BadKey),
            ("9a", &KeyErrorKind::BadKey),
            ("cid", &KeyErrorKind::Syntax("unterminated string")),
        ]
    );
    // A bad escape and a quoted comma.
    let p = parse(r#"sid="a\qb",cid="x,y",bl=1"#).unwrap();
    assert_eq!(p.cmcd.cid.as_deref(), Some("x,y"));
    assert_eq!(p.cmcd.bl, Some(1));
    assert_eq!(
        kinds(&p),
        vec![("sid", &KeyErrorKind::Syntax("bad escape in string"))]
    );
    // Empty members, spaces and true/false tokens are tolerated.
    let p = parse(" ,bs=true, su=false,,  bl=300 ,").unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(
        (p.cmcd.bs, p.cmcd.su, p.cmcd.bl),
        (Some(true), Some(false), Some(300))
    );
    assert!(parse("").unwrap().cmcd.is_empty());
}

#[test]
fn unknown_keys_are_kept_typed() {
    let p = parse(
        r#"com.example-myNumericKey=500,com.ex-s="v",com.ex-t=tok,com.ex-b,com.ex-d=0.5,v=2"#,
    )
    .unwrap();
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    let u = &p.cmcd.unknown;
    assert_eq!(u["com.example-myNumericKey"], Value::Integer(500));
    assert_eq!(u["com.ex-s"], Value::String("v".into()));
    assert_eq!(u["com.ex-t"], Value::Token("tok".into()));
    assert_eq!(u["com.ex-b"], Value::Boolean(true));
    assert_eq!(u["com.ex-d"], Value::Decimal(0.5));
    assert_eq!(p.cmcd.v, Some(2));
}

#[test]
fn limits() {
    let many: Vec<String> = (0..=MAX_KEYS).map(|i| format!("k{i}=1")).collect();
    assert_eq!(
        parse(&many.join(",")),
        Err(CmcdError::TooManyKeys { max: MAX_KEYS })
    );
    assert!(parse(&many[..MAX_KEYS].join(",")).is_ok());
    let big = format!("sid=\"{}\"", "a".repeat(MAX_INPUT_LEN));
    assert!(matches!(parse(&big), Err(CmcdError::TooLarge { .. })));
    assert!(matches!(
        parse_query_value(&"%41".repeat(MAX_INPUT_LEN + 1)),
        Err(CmcdError::TooLarge { .. })
    ));
    // The key budget is shared by all four headers.
    let half: Vec<String> = (0..MAX_KEYS / 2 + 1).map(|i| format!("k{i}=1")).collect();
    let half = half.join(",");
    let headers: Vec<(&str, &[u8])> = vec![
        ("CMCD-Request", half.as_bytes()),
        ("CMCD-Object", half.as_bytes()),
    ];
    assert_eq!(
        parse_headers(headers),
        Err(CmcdError::TooManyKeys { max: MAX_KEYS })
    );
    assert_eq!(
        parse_query_value("sid%3D%22%FF%22"),
        Err(CmcdError::BadEncoding)
    );
    let bad: Vec<(&str, &[u8])> = vec![("CMCD-Status", b"bs,\xFF")];
    assert_eq!(parse_headers(bad), Err(CmcdError::BadEncoding));
    assert!(matches!(
        parse_json(&vec![b' '; MAX_JSON_LEN + 1]),
        Err(CmcdError::TooLarge { .. })
    ));
    assert_eq!(CmcdError::BadEncoding.label(), "bad_encoding");
}

#[test]
fn query_details() {
    assert_eq!(parse_query("a=1&b=2").unwrap(), None);
    assert_eq!(parse_query("").unwrap(), None);
    // Lower-case name, `+` as space inside a string, stray `%`.
    let p = parse_query("cmcd=sid%3D%22a+b%25%22%2Cbl%3D100%")
        .unwrap()
        .unwrap();
    assert_eq!(p.cmcd.sid.as_deref(), Some("a b%"));
    assert_eq!(p.cmcd.bl, None, "`100%` is not an integer");
    assert_eq!(kinds(&p), vec![("bl", &KeyErrorKind::Syntax("bad number"))]);
    // Bare `CMCD` without a value: present and empty.
    assert!(parse_query("CMCD").unwrap().unwrap().cmcd.is_empty());
}

#[test]
fn merge_takes_the_later_value() {
    let mut a = parse("bl=100,mtp=5,com.x-a=1").unwrap().cmcd;
    a.merge(parse("bl=200,bs,com.x-b=2").unwrap().cmcd);
    assert_eq!((a.bl, a.mtp, a.bs), (Some(200), Some(5), Some(true)));
    assert_eq!(a.unknown.len(), 2);
}

#[test]
fn encode_round_trips_and_is_sorted() {
    let c = all_keys();
    let text = c.encode();
    assert!(text.starts_with("bl=21300,br=3200,bs,cid="), "{text}");
    assert_eq!(parse(&text).unwrap().cmcd, c);
    assert_eq!(parse_query_value(&c.encode_query_value()).unwrap().cmcd, c);
    let f = Cmcd {
        bs: Some(false),
        pr: Some(2.0),
        ..Cmcd::default()
    };
    assert_eq!(f.encode(), "bs=?0,pr=2.0");
}

fn arb_cmcd() -> impl Strategy<Value = Cmcd> {
    let s = "[ -~]{0,20}";
    (
        (
            proptest::option::of(0u64..MAX_INTEGER as u64),
            proptest::option::of(0u64..100_000),
            proptest::option::of(any::<bool>()),
            proptest::option::of(s),
            proptest::option::of(s),
            proptest::option::of((0u64..1000, 0u64..1000).prop_map(|(a, b)| format!("{a}-{b}"))),
        ),
        (
            proptest::option::of((0u32..1000).prop_map(|x| f64::from(x) / 100.0)),
            proptest::option::of(prop_oneof![
                Just(ObjectType::Video),
                Just(ObjectType::Muxed),
                Just(ObjectType::TimedText)
            ]),
            proptest::option::of(prop_oneof![Just(StreamType::Live), Just(StreamType::Vod)]),
            proptest::option::of(any::<bool>()),
            proptest::collection::btree_map(
                "[a-z]{1,4}-[a-z]{1,4}",
                prop_oneof![
                    any::<i32>().prop_map(|i| Value::Integer(i.into())),
                    "[ -~]{0,8}".prop_map(Value::String),
                    "[a-z][a-z0-9]{0,5}".prop_map(Value::Token),
                    any::<bool>().prop_map(Value::Boolean),
                ],
                0..4,
            ),
        ),
    )
        .prop_map(
            |((br, bl, bs, sid, cid, nrr), (pr, ot, st, su, unknown))| Cmcd {
                br,
                bl,
                bs,
                sid,
                cid,
                nrr,
                pr,
                ot,
                st,
                su,
                unknown,
                ..Cmcd::default()
            },
        )
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,300}", raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse(&s);
        let _ = parse_query(&s);
        let _ = parse_query_value(&s);
        let _ = parse_headers([("CMCD-Request", s.as_bytes()), ("CMCD-Status", &raw[..])]);
        let _ = parse_json(s.as_bytes());
        let _ = parse_json(&raw);
        if let Ok(text) = std::str::from_utf8(&raw) {
            let _ = parse(text);
        }
    }

    #[test]
    fn cmcd_like_text_never_panics(parts in proptest::collection::vec(
        prop_oneof![
            Just(",".to_string()), Just("=".to_string()), Just("\"".to_string()),
            Just("\\".to_string()), Just("?1".to_string()), Just("-".to_string()),
            Just(".".to_string()), Just(" ".to_string()), "[a-z]{1,3}", "[0-9]{1,20}",
            Just("%2C".to_string()), Just("%".to_string()),
        ], 0..40)) {
        let s = parts.concat();
        let _ = parse(&s);
        let _ = parse_query_value(&s);
    }

    #[test]
    fn encode_then_parse_is_identity(c in arb_cmcd()) {
        let p = parse(&c.encode()).unwrap();
        prop_assert!(p.warnings.is_empty(), "{:?} from {}", p.warnings, c.encode());
        prop_assert_eq!(&p.cmcd, &c);
        let q = parse_query(&format!("x=1&CMCD={}", c.encode_query_value())).unwrap().unwrap();
        prop_assert_eq!(q.cmcd, c);
    }
}
