use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn defaults_apply_when_only_required_settings_are_given() {
    let cfg = Config::load_from(
        ["vantage-agent", "--node-id", "edge-1", "--ca", "ca.pem"],
        env(&[]),
    )
    .unwrap();
    assert_eq!(cfg.node_id, "edge-1");
    assert_eq!(
        cfg.schedulers,
        vec![HostPort::parse("127.0.0.1:7400").unwrap()]
    );
    assert_eq!(cfg.routes[0].url, "https://127.0.0.1:7401");
    assert_eq!(cfg.routes[0].host, "127.0.0.1");
    assert_eq!(cfg.data_dir, PathBuf::from("./vantage-agent-data"));
    assert_eq!(cfg.http_listen.to_string(), "0.0.0.0:8080");
    assert_eq!(cfg.admin_listen.to_string(), "127.0.0.1:8081");
    assert_eq!(cfg.probe_listen.to_string(), "0.0.0.0:7402");
    assert_eq!(cfg.probe_advertise, "0.0.0.0:7402");
    assert_eq!(cfg.capacity_mbps, 1000.0);
    assert_eq!(cfg.region, "");
    assert!(cfg.public_url.starts_with("http://") && cfg.public_url.ends_with(":8080"));
    assert_eq!(cfg.coord, None);
    assert_eq!(cfg.log_format, LogFormat::Text);
    assert_eq!(cfg.routes_max_entries, 1_000_000);
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "agent.toml",
        r#"
node_id = "from-file"
region = "file-region"
capacity_mbps = 10.0
ca = "file-ca.pem"
scheduler = "file.example:7400"
"#,
    );
    let cfg = Config::load_from(
        [
            "vantage-agent",
            "--config",
            file.to_str().unwrap(),
            "--node-id",
            "from-flag",
        ],
        env(&[
            ("VANTAGE_NODE_ID", "from-env"),
            ("VANTAGE_REGION", "env-region"),
            ("VANTAGE_LAT", "-33.5"),
            ("VANTAGE_LON", "151.2"),
            (
                "VANTAGE_ORIGIN",
                "live/*=http://o1:8080, game/x=http://o2/{app}/{stream}.flv",
            ),
            ("UNRELATED", "x"),
            ("VANTAGE_SOMETHING_ELSE", "ignored"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.node_id, "from-flag", "flag wins over env and file");
    assert_eq!(cfg.region, "env-region", "env wins over file");
    assert_eq!(cfg.capacity_mbps, 10.0, "file wins over default");
    assert_eq!(cfg.ca, PathBuf::from("file-ca.pem"));
    assert_eq!(cfg.schedulers[0].host, "file.example");
    assert_eq!(cfg.routes[0].url, "https://file.example:7401");
    assert_eq!(cfg.coord, Coord::new(-33.5, 151.2));
    assert_eq!(cfg.origins.len(), 2);
    assert_eq!(cfg.origins[0].pattern, "live/*");
    assert_eq!(cfg.origins[1].url, "http://o2/{app}/{stream}.flv");

    // The config file can come from the environment too.
    let cfg = Config::load_from(
        ["vantage-agent"],
        env(&[("VANTAGE_CONFIG", file.to_str().unwrap())]),
    )
    .unwrap();
    assert_eq!(cfg.node_id, "from-file");
}

#[test]
fn negative_coordinates_and_ipv6_scheduler_parse_from_flags() {
    let cfg = Config::load_from(
        [
            "vantage-agent",
            "--node-id=e",
            "--ca=c",
            "--lat",
            "-12.5",
            "--lon",
            "-77",
            "--scheduler",
            "[::1]:9000",
        ],
        env(&[]),
    )
    .unwrap();
    assert_eq!(cfg.coord, Coord::new(-12.5, -77.0));
    assert_eq!(cfg.schedulers[0].host, "::1");
    assert_eq!(cfg.schedulers[0].port, 9000);
    assert_eq!(cfg.routes[0].url, "https://[::1]:7401");
    assert_eq!(cfg.routes[0].host, "::1");
}

#[test]
fn unknown_file_key_is_an_error_naming_the_key() {
    let err = Settings::from_toml("node_id = \"a\"\nnode_idd = \"b\"\n", Path::new("x.toml"))
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ConfigError::File { .. }));
    assert!(msg.contains("node_idd"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
    assert_eq!(msg.lines().count(), 1, "one line: {msg}");
    assert!(msg.contains("x.toml"), "{msg}");
}

#[test]
fn bad_env_value_names_the_variable() {
    let err = Config::load_from(
        ["vantage-agent", "--node-id=e", "--ca=c"],
        env(&[("VANTAGE_LAT", "north")]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("VANTAGE_LAT"), "{err}");
}

fn validate_err(args: &[&str]) -> String {
    let mut argv = vec!["vantage-agent"];
    argv.extend_from_slice(args);
    Config::load_from(argv, env(&[])).unwrap_err().to_string()
}

#[test]
fn validation_errors_are_clear() {
    assert!(validate_err(&["--ca=c"]).contains("node id is required"));
    assert!(validate_err(&["--node-id=-bad", "--ca=c"]).contains("node id \"-bad\" is invalid"));
    assert!(validate_err(&["--node-id=e"]).contains("--ca is required"));
    assert!(
        validate_err(&["--node-id=e", "--ca=c", "--token=t", "--token-file=f"])
            .contains("either --token or --token-file")
    );
    assert!(
        validate_err(&["--node-id=e", "--ca=c", "--cert=c.pem"]).contains("--cert requires --key")
    );
    assert!(
        validate_err(&["--node-id=e", "--ca=c", "--key=k.pem"]).contains("--key requires --cert")
    );
    assert!(
        validate_err(&["--node-id=e", "--ca=c", "--lat=95", "--lon=0"]).contains("out of range")
    );
    assert!(validate_err(&["--node-id=e", "--ca=c", "--lat=5"]).contains("together"));
    assert!(validate_err(&["--node-id=e", "--ca=c", "--origin=live/*"]).contains("PATTERN=URL"));
    assert!(
        validate_err(&["--node-id=e", "--ca=c", "--origin=li ve/x=http://o"]).contains("--origin")
    );
    assert!(
        validate_err(&["--node-id=e", "--ca=c", "--origin=live/x=ftp://o"])
            .contains("not an http(s) URL")
    );
    assert!(validate_err(&["--node-id=e", "--ca=c", "--scheduler=nope"]).contains("HOST:PORT"));
    assert!(
        validate_err(&["--node-id=e", "--ca=c", "--routes=http://s:7401"]).contains("https://")
    );
    assert!(validate_err(&["--node-id=e", "--ca=c", "--capacity-mbps=0"]).contains("positive"));
    assert!(
        validate_err(&["--node-id=e", "--ca=c", "--public-url=edge:80"]).contains("public-url")
    );
}

#[test]
fn token_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "tok", "  secret-token\n");
    assert_eq!(TokenSource::File(f).read().unwrap(), "secret-token");
    let empty = write(dir.path(), "empty", "\n");
    assert!(TokenSource::File(empty).read().is_err());
    assert!(
        TokenSource::File(dir.path().join("missing"))
            .read()
            .is_err()
    );
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/agent.toml")
}

#[test]
fn example_config_parses_with_the_real_loader_and_documents_every_key() {
    let path = example_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = Config::load_from(
        ["vantage-agent", "--config", path.to_str().unwrap()],
        env(&[]),
    )
    .unwrap();
    assert_eq!(cfg.node_id, "edge-1");

    // Every setting is mentioned as `key =` (set or commented out).
    for arg in Settings::command().get_arguments() {
        let Some(flag) = arg.get_long() else { continue };
        let key = flag.replace('-', "_");
        if key == "config" || key == "help" || key == "version" {
            continue;
        }
        let documented = text
            .lines()
            .map(|l| l.trim_start_matches('#').trim_start())
            .any(|l| l.starts_with(&format!("{key} =")));
        assert!(
            documented,
            "deploy/config/agent.toml does not document `{key}`"
        );
    }

    // The commented-out examples parse too.
    let uncommented: String = text
        .lines()
        .map(|l| {
            let t = l.trim_start_matches("# ");
            if t.contains(" = ") && !t.starts_with('#') {
                t.to_owned()
            } else {
                l.to_owned()
            }
        })
        .filter(|l| !l.starts_with("origin = []"))
        .filter(|l| !l.starts_with("token = "))
        .collect::<Vec<_>>()
        .join("\n");
    let all = Settings::from_toml(&uncommented, &path).unwrap();
    assert!(all.token_file.is_some() && all.cert.is_some() && all.lat.is_some());
    assert_eq!(all.origin.len(), 2);
    all.validate().unwrap();
}

#[test]
fn relay_settings_apply_and_are_range_checked() {
    let cfg = Config::load_from(
        [
            "vantage-agent",
            "--node-id=e",
            "--ca=c",
            "--relay-max-lag-ms=1500",
            "--relay-stall-timeout-ms=500",
        ],
        env(&[("VANTAGE_RELAY_IDLE_TIMEOUT_MS", "3000")]),
    )
    .unwrap();
    assert_eq!(cfg.relay.max_lag, std::time::Duration::from_millis(1500));
    assert_eq!(
        cfg.relay.stall_timeout,
        std::time::Duration::from_millis(500)
    );
    assert_eq!(cfg.relay.idle_timeout, std::time::Duration::from_secs(3));
    assert_eq!(cfg.relay.overflow_limit, 3);
    let defaults = Config::load_from(["vantage-agent", "--node-id=e", "--ca=c"], env(&[])).unwrap();
    assert_eq!(defaults.relay, crate::relay::RelayConfig::default());
    assert!(
        validate_err(&["--node-id=e", "--ca=c", "--relay-max-lag-ms=5"])
            .contains("--relay-max-lag-ms 5 is outside")
    );
    assert!(
        validate_err(&["--node-id=e", "--ca=c", "--relay-overflow-disconnect=0"])
            .contains("at least 1")
    );
    assert!(
        validate_err(&["--node-id=e", "--ca=c", "--relay-cache-max-bytes=10"]).contains("65536")
    );
}

#[test]
fn routes_max_entries_from_every_source_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "agent.toml", "routes_max_entries = 5000\n");
    let load = |args: &[&str], vars: &[(&str, &str)]| {
        let mut argv = vec!["vantage-agent", "--node-id=e", "--ca=c", "--config"];
        argv.push(file.to_str().unwrap());
        argv.extend_from_slice(args);
        Config::load_from(argv, env(vars)).map(|c| c.routes_max_entries)
    };
    assert_eq!(load(&[], &[]).unwrap(), 5000);
    let var = [("VANTAGE_ROUTES_MAX_ENTRIES", "300")];
    assert_eq!(load(&[], &var).unwrap(), 300);
    assert_eq!(load(&["--routes-max-entries=20"], &var).unwrap(), 20);
    assert!(
        validate_err(&["--node-id=e", "--ca=c", "--routes-max-entries=0"])
            .contains("--routes-max-entries must be at least 1")
    );
    let bad = [("VANTAGE_ROUTES_MAX_ENTRIES", "many")];
    let err = load(&[], &bad).unwrap_err().to_string();
    assert!(err.contains("VANTAGE_ROUTES_MAX_ENTRIES"), "{err}");
}

#[test]
fn rtmp_settings_apply_and_are_range_checked() {
    let defaults = Config::load_from(["vantage-agent", "--node-id=e", "--ca=c"], env(&[])).unwrap();
    assert_eq!(defaults.rtmp_listen.to_string(), "0.0.0.0:1935");
    assert_eq!(defaults.rtmp, crate::rtmp::RtmpConfig::default());
    let cfg = Config::load_from(
        [
            "vantage-agent",
            "--node-id=e",
            "--ca=c",
            "--rtmp-listen=127.0.0.1:19350",
            "--rtmp-max-connections=50",
            "--rtmp-handshake-timeout-ms=800",
        ],
        env(&[
            ("VANTAGE_RTMP_IDLE_TIMEOUT_MS", "2000"),
            ("VANTAGE_RTMP_MAX_CHUNK_SIZE", "4096"),
            ("VANTAGE_RTMP_MAX_MESSAGE_BYTES", "1048576"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.rtmp_listen.to_string(), "127.0.0.1:19350");
    assert_eq!(cfg.rtmp.max_connections, 50);
    assert_eq!(
        cfg.rtmp.handshake_timeout,
        std::time::Duration::from_millis(800)
    );
    assert_eq!(cfg.rtmp.idle_timeout, std::time::Duration::from_secs(2));
    assert_eq!(cfg.rtmp.max_chunk_size, 4096);
    assert_eq!(cfg.rtmp.max_message_bytes, 1 << 20);
    for (flag, want) in [
        (
            "--rtmp-max-connections=0",
            "--rtmp-max-connections 0 is outside",
        ),
        (
            "--rtmp-max-chunk-size=64",
            "--rtmp-max-chunk-size 64 is outside",
        ),
        (
            "--rtmp-idle-timeout-ms=1",
            "--rtmp-idle-timeout-ms 1 is outside",
        ),
        (
            "--rtmp-max-message-bytes=99999999",
            "--rtmp-max-message-bytes 99999999 is outside",
        ),
    ] {
        let e = validate_err(&["--node-id=e", "--ca=c", flag]);
        assert!(e.contains(want), "{flag}: {e}");
    }
}

#[test]
fn comment_settings_apply_and_are_range_checked() {
    let defaults = Config::load_from(["vantage-agent", "--node-id=e", "--ca=c"], env(&[])).unwrap();
    assert_eq!(
        defaults.comments,
        crate::comments::CommentsConfig::default()
    );
    assert_eq!(defaults.relay.max_pending, 4096);
    let cfg = Config::load_from(
        [
            "vantage-agent",
            "--node-id=e",
            "--ca=c",
            "--comments-heartbeat-ms=5000",
            "--comments-coalesce-ms=0",
            "--comments-client-rate=2.5",
            "--comments-room-burst=10",
            "--comments-fanout-capacity=250000",
            "--relay-max-pending=100",
            "--cmcd-beacon-rate=0.5",
            "--cmcd-client-prefix-v4=24",
        ],
        env(&[
            ("VANTAGE_CMCD_BEACON_BURST", "3"),
            ("VANTAGE_CMCD_SESSIONS_PER_CLIENT", "8"),
            ("VANTAGE_COMMENTS_IDLE_TIMEOUT_MS", "15000"),
            ("VANTAGE_COMMENTS_BUFFER", "64"),
            ("VANTAGE_COMMENTS_QUEUE_BYTES", "8192"),
        ]),
    )
    .unwrap();
    let c = &cfg.comments;
    assert_eq!(c.heartbeat, std::time::Duration::from_secs(5));
    assert_eq!(c.idle_timeout, std::time::Duration::from_secs(15));
    assert_eq!(c.coalesce, std::time::Duration::ZERO);
    assert_eq!((c.buffer, c.queue_bytes), (64, 8192));
    assert_eq!((c.client_rate.per_s, c.room_rate.burst), (2.5, 10.0));
    assert_eq!(c.fanout_capacity_per_s, 250_000.0);
    assert_eq!(cfg.relay.max_pending, 100);
    let r = &cfg.relay;
    assert_eq!((r.cmcd_beacon_rate, r.cmcd_beacon_burst), (0.5, 3.0));
    assert_eq!((r.cmcd_client_prefix_v4, r.cmcd_client_prefix_v6), (24, 64));
    assert_eq!(
        (r.cmcd_sessions_per_client, r.cmcd_max_sessions),
        (8, 100_000)
    );
    for (flags, want) in [
        (
            &[
                "--comments-heartbeat-ms=30000",
                "--comments-idle-timeout-ms=20000",
            ][..],
            "must be longer than --comments-heartbeat-ms",
        ),
        (
            &["--comments-coalesce-ms=5000"],
            "--comments-coalesce-ms 5000 is outside",
        ),
        (
            &["--comments-client-rate=0"],
            "--comments-client-rate 0 is outside",
        ),
        (&["--comments-buffer=1"], "--comments-buffer 1 is outside"),
        (
            &["--comments-fanout-capacity=10"],
            "--comments-fanout-capacity 10 is outside",
        ),
        (
            &["--comments-max-text-bytes=0"],
            "--comments-max-text-bytes 0 is outside",
        ),
        (
            &["--comments-stall-timeout-ms=100"],
            "--comments-stall-timeout-ms 100 is outside",
        ),
        (
            &["--relay-max-pending=1"],
            "--relay-max-pending 1 is outside",
        ),
        (&["--cmcd-beacon-rate=0"], "--cmcd-beacon-rate 0 is outside"),
        (
            &["--cmcd-client-prefix-v4=33"],
            "--cmcd-client-prefix-v4 33 is outside",
        ),
        (
            &["--cmcd-max-sessions=10"],
            "--cmcd-max-sessions 10 is outside",
        ),
    ] {
        let mut args = vec!["--node-id=e", "--ca=c"];
        args.extend_from_slice(flags);
        let e = validate_err(&args);
        assert!(e.contains(want), "{flags:?}: {e}");
    }
}

#[test]
fn several_schedulers_from_flags_env_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let argv = |extra: &[&str]| {
        let mut a = vec!["vantage-agent", "--node-id=e", "--ca=c"];
        a.extend_from_slice(extra);
        a.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    // Repeated flags: every replica, route URLs derived for each.
    let cfg = Config::load_from(
        argv(&[
            "--scheduler=s1:7400",
            "--scheduler=s2:7400",
            "--scheduler=s1:7400",
        ]),
        env(&[]),
    )
    .unwrap();
    assert_eq!(
        cfg.schedulers,
        vec![
            HostPort::parse("s1:7400").unwrap(),
            HostPort::parse("s2:7400").unwrap()
        ],
        "duplicates are dropped"
    );
    let urls: Vec<&str> = cfg.routes.iter().map(|r| r.url.as_str()).collect();
    assert_eq!(urls, ["https://s1:7401", "https://s2:7401"]);
    assert_eq!(cfg.routes[1].host, "s2");
    // A comma-separated variable.
    let cfg = Config::load_from(
        argv(&[]),
        env(&[
            ("VANTAGE_SCHEDULER", "a:1, b:2"),
            ("VANTAGE_ROUTES", "https://a:3,https://b:4"),
        ]),
    )
    .unwrap();
    assert_eq!(cfg.schedulers.len(), 2);
    assert_eq!(cfg.routes[1].url, "https://b:4");
    // A list in the file; one string still works.
    let file = write(
        dir.path(),
        "a.toml",
        "node_id = \"e\"\nca = \"c\"\nscheduler = [\"x:1\", \"y:1\"]\n",
    );
    let cfg = Config::load_from(
        vec![
            "vantage-agent".to_owned(),
            format!("--config={}", file.display()),
        ],
        env(&[]),
    )
    .unwrap();
    assert_eq!(cfg.schedulers.len(), 2);
    let file = write(
        dir.path(),
        "b.toml",
        "node_id = \"e\"\nca = \"c\"\nscheduler = \"x:1\"\n",
    );
    let cfg = Config::load_from(
        vec![
            "vantage-agent".to_owned(),
            format!("--config={}", file.display()),
        ],
        env(&[]),
    )
    .unwrap();
    assert_eq!(cfg.schedulers.len(), 1);
    assert!(
        validate_err(&[
            "--node-id=e",
            "--ca=c",
            "--routes=https://a:1",
            "--routes=http://b:1"
        ])
        .contains("https://")
    );
}
