//! Issue 7, Must show 4: the deployment artifacts in `deploy/` are valid.
//!
//! * systemd: `systemd-analyze verify` accepts both units (any warning
//!   about them fails the test) and `systemd-analyze security --offline`
//!   rates them OK. The units name `/usr/local/bin/vantage-*`; the test
//!   verifies a copy whose binary paths point at the freshly built binaries
//!   (the only change), since `verify` checks that `ExecStart` exists.
//! * Kubernetes: every manifest passes `kubernetes-validate --strict`
//!   (PyPI, offline schemas bundled); the agent DaemonSet's termination
//!   grace exceeds the drain grace; the ConfigMaps' TOML loads with the real
//!   binaries' loaders.
//! * compose: parses (PyYAML), a scheduler and three agents, every flag
//!   given exists, stop grace above the drain grace.
//! * Dockerfiles: multi-stage (Rust builder, slim runtime), non-root user,
//!   the entrypoint is the binary copied from the builder.
//! * Prometheus, alert rules and the Grafana dashboard parse; flags in
//!   `--help` are all documented in docs/configuration.md.
//!
//! Tools: `systemd-analyze` and the Python venv of `scripts/test.sh`
//! (`VANTAGE_TEST_PYTHON`, or `target/pyvenv`) with `kubernetes-validate`
//! and PyYAML. Missing tools skip the check, or fail it under `CI=true`.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use vantage_tests::bins;
use vantage_tests::media::tool;
use vantage_tests::store::skip;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap_or_else(|e| panic!("repo root: {e}"))
}

fn read(rel: &str) -> String {
    let p = repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Runs a command; (exit code, stdout, stderr).
fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The Python of scripts/test.sh with kubernetes-validate and PyYAML.
fn python(test: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("VANTAGE_TEST_PYTHON").map(PathBuf::from),
        Some(
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo().join("target"))
                .join("pyvenv/bin/python"),
        ),
    ];
    for p in candidates.into_iter().flatten() {
        if p.is_file()
            && Command::new(&p)
                .args(["-c", "import kubernetes_validate, yaml"])
                .output()
                .is_ok_and(|o| o.status.success())
        {
            return Some(p);
        }
    }
    skip(
        test,
        "no Python with kubernetes-validate and PyYAML (run scripts/test.sh)",
    );
    None
}

/// Every YAML document of `files` as JSON, per file.
fn yaml_docs(py: &Path, files: &[PathBuf]) -> Vec<Vec<Value>> {
    let script = "import json, sys, yaml\n\
                  print(json.dumps([list(yaml.safe_load_all(open(f))) for f in sys.argv[1:]]))";
    let (code, out, err) = run(Command::new(py).arg("-c").arg(script).args(files));
    assert_eq!(code, 0, "YAML parse failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("JSON from the YAML dump: {e}"))
}

/// `--flag` names of `BIN --help`.
fn help_flags(bin: &str) -> BTreeSet<String> {
    let (code, out, err) = run(Command::new(bins::bin(bin)).arg("--help"));
    assert_eq!(code, 0, "{bin} --help: {err}");
    out.split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .filter(|w| !w.is_empty() && w != "help" && w != "version")
        .collect()
}

/// Every `--flag` of `args` must be a flag of `bin`.
fn assert_flags_exist(what: &str, bin: &str, args: &[String]) {
    let known = help_flags(bin);
    for a in args {
        if let Some(f) = a.strip_prefix("--") {
            let f = f.split('=').next().unwrap_or_default();
            assert!(known.contains(f), "{what}: {bin} has no flag --{f}");
        }
    }
}

/// `drain_grace_s` of deploy/config/agent.toml.
fn example_drain_grace_s() -> u64 {
    read("deploy/config/agent.toml")
        .lines()
        .find_map(|l| l.trim().strip_prefix("drain_grace_s = "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("drain_grace_s in deploy/config/agent.toml"))
}

/// `TimeoutStopSec=45s` → 45.
fn unit_seconds(unit: &str, key: &str) -> Option<u64> {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.trim().trim_end_matches('s').parse().ok())
}

#[test]
fn systemd_units_verify() {
    let test = "systemd_units_verify";
    let Some(analyze) = tool("systemd-analyze", test) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let bin_dir = bins::bin_dir().canonicalize().expect("binary dir");
    let grace = example_drain_grace_s();
    for (unit, bin) in [
        ("vantage-scheduler.service", bins::SCHEDULER),
        ("vantage-agent.service", bins::AGENT),
    ] {
        let text = read(&format!("deploy/systemd/{unit}"));
        for must in [
            "User=vantage",
            "Restart=on-failure",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "CapabilityBoundingSet=\n",
            "StateDirectory=",
            "KillSignal=SIGTERM",
        ] {
            assert!(text.contains(must), "{unit} lacks {must:?}");
        }
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart");
        let mut words = exec.split_whitespace();
        assert_eq!(
            words.next(),
            Some(format!("/usr/local/bin/{bin}").as_str()),
            "{unit}"
        );
        let args: Vec<String> = words.map(str::to_owned).collect();
        assert_flags_exist(unit, bin, &args);
        if bin == bins::AGENT {
            let stop = unit_seconds(&text, "TimeoutStopSec").expect("TimeoutStopSec");
            assert!(
                stop > grace + 5,
                "{unit}: TimeoutStopSec={stop}s must exceed drain_grace_s={grace}s + 5 s"
            );
        }

        let copy = dir.path().join(unit);
        let rewritten = text.replace("/usr/local/bin/", &format!("{}/", bin_dir.display()));
        std::fs::write(&copy, rewritten).expect("write unit copy");
        let (code, out, err) = run(Command::new(&analyze).arg("verify").arg(&copy));
        let complaints: Vec<&str> = out
            .lines()
            .chain(err.lines())
            .filter(|l| l.contains(unit))
            .collect();
        assert!(
            code == 0 && complaints.is_empty(),
            "systemd-analyze verify {unit}: exit {code}\n{out}{err}"
        );

        let (code, out, err) = run(Command::new(&analyze)
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&copy));
        let exposure = out
            .lines()
            .chain(err.lines())
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(": ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok());
        eprintln!("{unit}: systemd-analyze verify clean; security exposure {exposure:?}");
        match exposure {
            Some(e) => assert!(e <= 2.0, "{unit}: exposure {e} (want <= 2.0)\n{out}"),
            None => panic!("systemd-analyze security {unit}: exit {code}\n{out}{err}"),
        }
    }
}

/// Copies a ConfigMap TOML with `/etc/vantage/` moved under `root`.
fn relocate(toml: &str, root: &Path) -> String {
    toml.replace("/etc/vantage/", &format!("{}/etc/vantage/", root.display()))
}

#[test]
fn kubernetes_manifests_validate() {
    let test = "kubernetes_manifests_validate";
    let Some(py) = python(test) else {
        return;
    };
    let dir = repo().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let (code, out, err) = run(Command::new(&py)
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(&files));
    eprintln!("{out}{err}");
    assert_eq!(code, 0, "kubernetes-validate failed:\n{out}{err}");

    let docs: Vec<Value> = yaml_docs(&py, &files).into_iter().flatten().collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
            .clone()
    };
    let ds = find("DaemonSet", "vantage-agent");
    find("Deployment", "vantage-scheduler");
    find("Service", "vantage-scheduler");
    find("PersistentVolumeClaim", "vantage-scheduler-data");

    // The drain fits in the pod's termination grace.
    let agent_toml = find("ConfigMap", "vantage-agent")["data"]["agent.toml"]
        .as_str()
        .expect("agent.toml")
        .to_owned();
    let grace: u64 = agent_toml
        .lines()
        .find_map(|l| l.trim().strip_prefix("drain_grace_s = "))
        .and_then(|v| v.parse().ok())
        .expect("drain_grace_s in the agent ConfigMap");
    let term = ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        term > grace + 5,
        "termination grace {term}s vs drain {grace}s"
    );

    // The ConfigMaps load with the real loaders: with the referenced files
    // present (dummies), startup fails only when the TLS material is read
    // (exit 1), never on configuration (exit 2).
    let root = tempfile::tempdir().expect("tempdir");
    for sub in ["etc/vantage/tls", "etc/vantage/enroll", "etc/vantage/ca"] {
        std::fs::create_dir_all(root.path().join(sub)).expect("mkdir");
    }
    for f in [
        "etc/vantage/tls/tls.crt",
        "etc/vantage/tls/tls.key",
        "etc/vantage/ca/ca.pem",
    ] {
        std::fs::write(root.path().join(f), "not a PEM file\n").expect("write");
    }
    std::fs::write(
        root.path().join("etc/vantage/enroll/enroll.token"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .expect("write");
    let sched_toml = find("ConfigMap", "vantage-scheduler")["data"]["scheduler.toml"]
        .as_str()
        .expect("scheduler.toml")
        .to_owned();
    let local = [
        "--quic-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ];
    let cfg = root.path().join("scheduler.toml");
    std::fs::write(&cfg, relocate(&sched_toml, root.path())).expect("write");
    let (code, _, err) = run(Command::new(bins::bin(bins::SCHEDULER))
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(root.path().join("sched-data"))
        .args(local));
    assert!(
        code == 1 && err.contains("tls.crt"),
        "scheduler ConfigMap: exit {code} (want 1, failing on the dummy certificate): {err}"
    );
    let cfg = root.path().join("agent.toml");
    std::fs::write(&cfg, relocate(&agent_toml, root.path())).expect("write");
    let (code, _, err) = run(Command::new(bins::bin(bins::AGENT))
        .arg("--config")
        .arg(&cfg)
        .args(["--node-id", "k8s-node-1", "--data-dir"])
        .arg(root.path().join("agent-data"))
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--rtmp-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--probe-listen",
            "127.0.0.1:0",
        ]));
    assert!(
        code == 1 && err.contains("CA file"),
        "agent ConfigMap: exit {code} (want 1, failing on the dummy CA): {err}"
    );
    for c in ds["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
    {
        let args: Vec<String> = c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect();
        assert_flags_exist("agent DaemonSet", bins::AGENT, &args);
    }
}

#[test]
fn compose_file_parses() {
    let test = "compose_file_parses";
    let Some(py) = python(test) else {
        return;
    };
    let file = repo().join("deploy/compose/compose.yaml");
    let doc = yaml_docs(&py, &[file]).remove(0).remove(0);
    let services = doc["services"].as_object().expect("services");
    let sched = &services["scheduler"];
    let args = |s: &Value| -> Vec<String> {
        s["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    };
    assert_flags_exist("compose scheduler", bins::SCHEDULER, &args(sched));
    let agents: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| {
            s["build"]["dockerfile"]
                .as_str()
                .is_some_and(|d| d.ends_with("agent.Dockerfile"))
        })
        .collect();
    assert!(agents.len() >= 3, "three agents: {:?}", services.keys());
    for (name, a) in &agents {
        let a_args = args(a);
        assert_flags_exist(name, bins::AGENT, &a_args);
        assert_eq!(
            a["depends_on"]["scheduler"]["condition"], "service_healthy",
            "{name}"
        );
        let grace: u64 = a_args
            .iter()
            .position(|x| x == "--drain-grace-s")
            .and_then(|i| a_args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .expect("--drain-grace-s");
        let stop: u64 = a["stop_grace_period"]
            .as_str()
            .and_then(|s| s.trim_end_matches('s').parse().ok())
            .expect("stop_grace_period");
        assert!(stop > grace, "{name}: stop grace {stop}s vs drain {grace}s");
    }
    for s in services.values() {
        if let Some(d) = s["build"]["dockerfile"].as_str() {
            assert!(repo().join(d).is_file(), "{d} missing");
        }
    }
}

#[test]
fn dockerfiles_are_multi_stage_and_unprivileged() {
    for (file, bin) in [
        ("deploy/docker/scheduler.Dockerfile", bins::SCHEDULER),
        ("deploy/docker/agent.Dockerfile", bins::AGENT),
    ] {
        let text = read(file);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .collect();
        let froms: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("FROM "))
            .collect();
        assert_eq!(froms.len(), 2, "{file}: {froms:?}");
        assert!(
            froms[0].starts_with("FROM rust:") && froms[0].ends_with(" AS builder"),
            "{file}: {}",
            froms[0]
        );
        assert!(
            froms[1].starts_with("FROM debian:") && froms[1].contains("-slim"),
            "{file}: {}",
            froms[1]
        );
        assert!(
            text.contains(&format!("--bin {bin}")),
            "{file} builds {bin}"
        );
        let runtime = text.split(froms[1]).nth(1).expect("runtime stage");
        let user = runtime
            .lines()
            .find_map(|l| l.trim().strip_prefix("USER "))
            .expect("USER in the runtime stage");
        assert!(
            !["root", "0", "0:0"].contains(&user.trim()),
            "{file} runs as {user}"
        );
        let dest = format!("/usr/local/bin/{bin}");
        assert!(
            runtime.contains("COPY --from=builder") && runtime.contains(&dest),
            "{file} copies {bin} from the builder"
        );
        assert!(
            runtime.contains(&format!("ENTRYPOINT [\"{dest}\"]")),
            "{file} entrypoint"
        );
        assert!(
            repo().join(format!("{file}.dockerignore")).is_file(),
            "{file}.dockerignore keeps target/ out of the context"
        );
    }
}

#[test]
fn monitoring_files_parse() {
    let test = "monitoring_files_parse";
    let dash: Value =
        serde_json::from_str(&read("deploy/monitoring/grafana/vantage-dashboard.json"))
            .expect("dashboard JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 20);
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "prometheus", "{}", p["title"]);
        assert!(
            p["targets"]
                .as_array()
                .is_some_and(|t| !t.is_empty() && t.iter().all(|t| t["expr"].is_string())),
            "{}",
            p["title"]
        );
    }
    let Some(py) = python(test) else {
        return;
    };
    let files: Vec<PathBuf> = [
        "deploy/monitoring/prometheus.yml",
        "deploy/monitoring/prometheus-kubernetes.yml",
        "deploy/monitoring/alerts.yml",
        "deploy/monitoring/grafana/provisioning/datasources/prometheus.yml",
        "deploy/monitoring/grafana/provisioning/dashboards/vantage.yml",
    ]
    .iter()
    .map(|f| repo().join(f))
    .collect();
    let docs = yaml_docs(&py, &files);
    for (i, d) in docs.iter().take(2).enumerate() {
        let jobs: Vec<&str> = d[0]["scrape_configs"]
            .as_array()
            .expect("scrape_configs")
            .iter()
            .filter_map(|j| j["job_name"].as_str())
            .collect();
        assert_eq!(
            jobs,
            ["vantage-scheduler", "vantage-agent"],
            "{}",
            files[i].display()
        );
    }
    let rules: Vec<&Value> = docs[2][0]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert!(rules.len() >= 8);
    for r in rules {
        assert!(r["alert"].is_string() && r["expr"].is_string(), "{r}");
    }
    assert_eq!(docs[3][0]["datasources"][0]["uid"], "prometheus");
}

#[test]
fn configuration_reference_covers_every_flag() {
    let doc = read("docs/configuration.md");
    let mut missing = Vec::new();
    for bin in [bins::SCHEDULER, bins::AGENT] {
        for f in help_flags(bin) {
            if !doc.contains(&format!("--{f}")) {
                missing.push(format!("{bin} --{f}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not mention: {missing:?}"
    );
}

/// Issue 19: the three-replica manifests (`deploy/kubernetes/replicas/`)
/// pass `kubernetes-validate --strict`: a StatefulSet of 3 whose pods name
/// themselves (`--scheduler-id`, advertise URL) and read the database URL
/// from a Secret, a headless Service for the agents, a LoadBalancer for
/// viewers, a disruption budget keeping 2; the ConfigMap loads with the
/// real loader.
#[test]
fn kubernetes_replica_manifests_validate() {
    let test = "kubernetes_replica_manifests_validate";
    let Some(py) = python(test) else {
        return;
    };
    let file = repo().join("deploy/kubernetes/replicas/scheduler.yaml");
    let (code, out, err) = run(Command::new(&py)
        .args(["-m", "kubernetes_validate", "--strict"])
        .arg(&file));
    assert_eq!(code, 0, "kubernetes-validate failed:\n{out}{err}");
    let docs = yaml_docs(&py, std::slice::from_ref(&file)).remove(0);
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in {}", file.display()))
            .clone()
    };
    let sts = find("StatefulSet", "vantage-scheduler");
    assert_eq!(sts["spec"]["replicas"], 3);
    let headless = find("Service", "vantage-scheduler-replicas");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(sts["spec"]["serviceName"], "vantage-scheduler-replicas");
    assert_eq!(
        find("PodDisruptionBudget", "vantage-scheduler")["spec"]["minAvailable"],
        2
    );
    let env: Vec<Value> = sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let named = |n: &str| env.iter().find(|e| e["name"] == n).cloned();
    assert!(
        named("VANTAGE_DATABASE_URL")
            .is_some_and(|e| e["valueFrom"]["secretKeyRef"]["name"] == "vantage-database"),
        "the database URL comes from a Secret: {env:?}"
    );
    assert_eq!(
        named("VANTAGE_SCHEDULER_ID").unwrap_or_default()["value"],
        "$(POD_NAME)"
    );
    assert!(named("VANTAGE_ADVERTISE_URL").is_some());

    let toml = find("ConfigMap", "vantage-scheduler-replicas")["data"]["scheduler.toml"]
        .as_str()
        .expect("scheduler.toml")
        .to_owned();
    assert!(toml.contains("lease_ms = "), "{toml}");
    let root = tempfile::tempdir().expect("tempdir");
    for sub in ["etc/vantage/tls", "etc/vantage/enroll"] {
        std::fs::create_dir_all(root.path().join(sub)).expect("mkdir");
    }
    for f in ["etc/vantage/tls/tls.crt", "etc/vantage/tls/tls.key"] {
        std::fs::write(root.path().join(f), "not a PEM file\n").expect("write");
    }
    std::fs::write(
        root.path().join("etc/vantage/enroll/enroll.token"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .expect("write");
    let cfg = root.path().join("scheduler.toml");
    std::fs::write(&cfg, relocate(&toml, root.path())).expect("write");
    let (code, _, err) = run(Command::new(bins::bin(bins::SCHEDULER))
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(root.path().join("sched-data"))
        .args(["--scheduler-id", "vantage-scheduler-0"])
        .args([
            "--quic-listen",
            "127.0.0.1:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .args(["--http-listen", "127.0.0.1:0"]));
    assert!(
        code == 1 && err.contains("tls.crt"),
        "replica ConfigMap: exit {code} (want 1, failing on the dummy certificate): {err}"
    );
}

/// Issue 19: `deploy/compose/replicas.yaml` parses: PostgreSQL, three
/// scheduler replicas with distinct ids on one database, agents given
/// every replica, every flag exists.
#[test]
fn compose_replicas_file_parses() {
    let test = "compose_replicas_file_parses";
    let Some(py) = python(test) else {
        return;
    };
    let file = repo().join("deploy/compose/replicas.yaml");
    let doc = yaml_docs(&py, &[file]).remove(0).remove(0);
    let services = doc["services"].as_object().expect("services");
    assert!(services.contains_key("postgres"), "{:?}", services.keys());
    let args = |s: &Value| -> Vec<String> {
        s["command"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect()
    };
    let value_of = |a: &[String], flag: &str| -> Vec<String> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect()
    };
    let built_with = |s: &Value, d: &str| {
        s["build"]["dockerfile"]
            .as_str()
            .is_some_and(|x| x.ends_with(d))
    };
    let schedulers: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| built_with(s, "scheduler.Dockerfile"))
        .collect();
    assert_eq!(schedulers.len(), 3, "{:?}", services.keys());
    let mut ids = BTreeSet::new();
    let mut urls = BTreeSet::new();
    for (name, s) in &schedulers {
        let a = args(s);
        assert_flags_exist(name, bins::SCHEDULER, &a);
        ids.extend(value_of(&a, "--scheduler-id"));
        urls.extend(value_of(&a, "--database-url"));
        assert_eq!(
            s["depends_on"]["postgres"]["condition"], "service_healthy",
            "{name}"
        );
    }
    assert_eq!(ids.len(), 3, "distinct --scheduler-id: {ids:?}");
    assert_eq!(urls.len(), 1, "one database: {urls:?}");
    assert!(
        urls.iter().all(|u| u.starts_with("postgres://")),
        "{urls:?}"
    );
    let agents: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| built_with(s, "agent.Dockerfile"))
        .collect();
    assert!(agents.len() >= 3);
    for (name, a) in &agents {
        let a_args = args(a);
        assert_flags_exist(name, bins::AGENT, &a_args);
        let given: BTreeSet<String> = value_of(&a_args, "--scheduler").into_iter().collect();
        let want: BTreeSet<String> = schedulers
            .iter()
            .map(|(n, _)| format!("{n}:7400"))
            .collect();
        assert_eq!(given, want, "{name} is given every replica");
    }
}
