//! Static checks of the deployment files under deploy/: the systemd unit, the Docker image and
//! compose demo, and the Kubernetes manifests. They parse the files and check that the ports,
//! paths, probes and configs agree with each other and with proxy.toml; no network, no containers.
//!
//! External validators run when installed and are skipped with a message otherwise:
//! `systemd-analyze` (Debian package `systemd`) and `kubernetes-validate` (PyPI). Set
//! LONGHAUL_REQUIRE_TOOLS=1 to turn a missing validator into a failure (CI does).

mod support;

use support::proxy::{self, TempDir};

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;

// ---- helpers: files ---------------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy_dir() -> PathBuf {
    root().join("deploy")
}

fn docker_dir() -> PathBuf {
    deploy_dir().join("docker")
}

fn k8s_dir() -> PathBuf {
    deploy_dir().join("kubernetes")
}

/// The directories with a kustomization.yaml: the proxy tier and the sidecar example.
fn kustomize_dirs() -> Vec<PathBuf> {
    vec![k8s_dir(), k8s_dir().join("sidecar")]
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn rel(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn files_with_ext(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_with_ext(&path, exts, out);
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e))
        {
            out.push(path);
        }
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    files_with_ext(dir, &["yaml", "yml"], &mut out);
    out.sort();
    out
}

/// Every document of a (possibly multi-document) YAML file; empty documents are left out.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", rel(path)))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn yaml_doc(path: &Path) -> Value {
    let mut docs = yaml_docs(path);
    assert_eq!(docs.len(), 1, "{} should hold one YAML document", rel(path));
    docs.remove(0)
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} should be a string, got {v:?}"))
}

fn seq<'a>(v: &'a Value, what: &str) -> &'a [Value] {
    v.as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what} should be a list, got {v:?}"))
}

/// A command or args list: a YAML list of strings, or one string split at whitespace.
fn words(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The value following `flag` in a command line (`--listen 0.0.0.0:8000` or `--listen=...`).
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let eq = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&eq).map(str::to_string)
        }
    })
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---- helpers: proxy.toml ----------------------------------------------------------------------

fn parse_toml(text: &str, what: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("{what} is not valid TOML: {e}"))
}

fn root_proxy_toml() -> toml::Table {
    parse_toml(&read(&root().join("proxy.toml")), "proxy.toml")
}

fn docker_proxy_toml_text() -> String {
    read(&docker_dir().join("proxy.toml"))
}

fn docker_proxy_toml() -> toml::Table {
    parse_toml(&docker_proxy_toml_text(), "deploy/docker/proxy.toml")
}

/// Every key path of a TOML table; arrays of tables appear as `upstream[].pool.max_size`.
fn key_paths(prefix: &str, table: &toml::Table, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(t) => key_paths(&path, t, out),
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(|i| i.is_table()) =>
            {
                for item in items {
                    key_paths(&format!("{path}[]"), item.as_table().unwrap(), out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
}

fn all_key_paths(table: &toml::Table) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    key_paths("", table, &mut out);
    out
}

fn socket_addr(s: &str, what: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("{what}: `{s}` is not an ip:port address: {e}"))
}

/// `[server] listen`: one address or a list of them.
fn listen_addrs(config: &toml::Table) -> Vec<SocketAddr> {
    let listen = config
        .get("server")
        .and_then(|s| s.get("listen"))
        .expect("config has no [server] listen");
    match listen {
        toml::Value::String(s) => vec![socket_addr(s, "server.listen")],
        toml::Value::Array(items) => items
            .iter()
            .map(|i| socket_addr(i.as_str().expect("server.listen entry"), "server.listen"))
            .collect(),
        other => panic!("server.listen should be a string or a list, got {other:?}"),
    }
}

fn listen_ports(config: &toml::Table) -> BTreeSet<u16> {
    listen_addrs(config).iter().map(SocketAddr::port).collect()
}

fn admin_addr(config: &toml::Table) -> SocketAddr {
    let listen = config
        .get("admin")
        .and_then(|a| a.get("listen"))
        .and_then(|l| l.as_str())
        .expect("config has no [admin] listen");
    socket_addr(listen, "admin.listen")
}

/// Every `host:port` in `[[upstream]] servers`.
fn upstream_servers(config: &toml::Table) -> Vec<(String, u16)> {
    let upstreams = config
        .get("upstream")
        .and_then(|u| u.as_array())
        .expect("config has no [[upstream]]");
    let mut out = Vec::new();
    for upstream in upstreams {
        for server in upstream
            .get("servers")
            .and_then(|s| s.as_array())
            .expect("upstream without servers")
        {
            let server = server.as_str().expect("server should be a string");
            let (host, port) = server
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("`{server}` is not host:port"));
            out.push((host.to_string(), port.parse().expect("server port")));
        }
    }
    out
}

fn drain_timeout(config: &toml::Table) -> Duration {
    let text = config
        .get("server")
        .and_then(|s| s.get("drain_timeout"))
        .and_then(|d| d.as_str())
        .unwrap_or("30s");
    humantime::parse_duration(text).expect("server.drain_timeout should be a duration")
}

/// `longhaul check --config <file>` on `text`, written to a temporary proxy.toml.
/// Returns its exit code and its stdout and stderr together.
fn longhaul_check(text: &str) -> (Option<i32>, String) {
    let dir = TempDir::new();
    let path = dir.write_config(text);
    let run = proxy::run(
        &["check", "--config", path.to_str().expect("a UTF-8 path")],
        Duration::from_secs(60),
    );
    (run.code, run.stdout + &run.stderr)
}

fn assert_check_passes(text: &str, what: &str) {
    let config = parse_toml(text, what);
    let (code, all) = longhaul_check(text);
    assert_eq!(code, Some(0), "`longhaul check` rejects {what}:\n{all}");
    // `check` prints the effective settings: the listen address must be among them, which also
    // tells a real check from a binary that exits 0 without reading the file.
    for addr in listen_addrs(&config) {
        assert!(
            all.contains(&addr.to_string()),
            "`longhaul check` on {what} should print the effective listen address {addr}:\n{all}"
        );
    }
}

// ---- helpers: Dockerfile ----------------------------------------------------------------------

struct Instruction {
    keyword: String,
    args: String,
}

/// The Dockerfile's instructions, with continuation lines joined and comments dropped.
fn dockerfile() -> Vec<Instruction> {
    let text = read(&docker_dir().join("Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') || (current.is_empty() && t.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (keyword, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        out.push(Instruction {
            keyword: keyword.to_uppercase(),
            args: args.trim().to_string(),
        });
        current.clear();
    }
    out
}

/// The instructions after the last FROM: what the runtime image is made of.
fn final_stage(instructions: &[Instruction]) -> &[Instruction] {
    let last_from = instructions
        .iter()
        .rposition(|i| i.keyword == "FROM")
        .expect("Dockerfile has no FROM");
    &instructions[last_from..]
}

// ---- helpers: compose -------------------------------------------------------------------------

fn compose() -> Value {
    yaml_doc(&docker_dir().join("compose.yaml"))
}

fn compose_services() -> BTreeMap<String, Value> {
    let compose = compose();
    let services = compose["services"]
        .as_mapping()
        .expect("compose.yaml has no services");
    services
        .iter()
        .map(|(k, v)| (str_of(k, "service name").to_string(), v.clone()))
        .collect()
}

/// The compose service running the proxy: the one started with `--config`.
fn compose_longhaul(services: &BTreeMap<String, Value>) -> (String, Value) {
    let found: Vec<_> = services
        .iter()
        .filter(|(_, s)| words(&s["command"]).iter().any(|w| w == "--config"))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "compose.yaml should have one service running `longhaul --config ...`"
    );
    (found[0].0.clone(), found[0].1.clone())
}

fn compose_service<'a>(services: &'a BTreeMap<String, Value>, name: &str) -> &'a Value {
    services
        .get(name)
        .unwrap_or_else(|| panic!("compose.yaml has no `{name}` service"))
}

/// The container side of each `ports:` entry ("8080:8080", "127.0.0.1:9901:9901/tcp", 8080).
fn compose_container_ports(service: &Value) -> BTreeSet<u16> {
    service["ports"]
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| match p {
            Value::Number(n) => n.as_u64().expect("port number") as u16,
            Value::String(s) => {
                let s = s.split('/').next().unwrap();
                s.rsplit(':')
                    .next()
                    .unwrap()
                    .parse()
                    .expect("container port")
            }
            Value::Mapping(_) => p["target"].as_u64().expect("ports target") as u16,
            other => panic!("unexpected ports entry {other:?}"),
        })
        .collect()
}

/// Bind mounts of a service as (source relative to the compose file's directory, target).
fn compose_bind_mounts(service: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for volume in service["volumes"]
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        match volume {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let source = parts[0];
                if parts.len() >= 2 && (source.starts_with('.') || source.starts_with('/')) {
                    out.push((source.to_string(), parts[1].to_string()));
                }
            }
            Value::Mapping(_) if volume["type"].as_str() == Some("bind") => out.push((
                str_of(&volume["source"], "volume source").to_string(),
                str_of(&volume["target"], "volume target").to_string(),
            )),
            _ => {}
        }
    }
    out
}

/// The mount target of the bind mount whose source is `source`.
fn mount_target(service: &Value, source: &str) -> Option<String> {
    compose_bind_mounts(service)
        .into_iter()
        .find(|(s, _)| s == source)
        .map(|(_, t)| t)
}

/// (context directory, Dockerfile path) of a compose `build:` entry.
fn compose_build(service: &Value) -> Option<(PathBuf, PathBuf)> {
    let build = &service["build"];
    let (context, dockerfile) = match build {
        Value::Null => return None,
        Value::String(s) => (s.clone(), "Dockerfile".to_string()),
        Value::Mapping(_) => (
            build["context"].as_str().unwrap_or(".").to_string(),
            build["dockerfile"]
                .as_str()
                .unwrap_or("Dockerfile")
                .to_string(),
        ),
        other => panic!("unexpected build entry {other:?}"),
    };
    let context = docker_dir().join(context);
    let dockerfile = context.join(dockerfile);
    Some((context, dockerfile))
}

fn compose_prometheus_config() -> Value {
    yaml_doc(&docker_dir().join("prometheus.yml"))
}

/// Every `static_configs` target of every scrape job, with its job name and metrics path.
fn scrape_targets(config: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for job in seq(&config["scrape_configs"], "scrape_configs") {
        let name = str_of(&job["job_name"], "job_name").to_string();
        let path = job["metrics_path"]
            .as_str()
            .unwrap_or("/metrics")
            .to_string();
        for sc in seq(&job["static_configs"], "static_configs") {
            for t in seq(&sc["targets"], "targets") {
                out.push((name.clone(), str_of(t, "target").to_string(), path.clone()));
            }
        }
    }
    out
}

/// A shell-style glob with `*` in the file name only (Prometheus rule_files).
fn glob_matches(pattern: &str, path: &str) -> bool {
    let (pdir, pfile) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    let (dir, file) = path.rsplit_once('/').unwrap_or(("", path));
    if pdir != dir {
        return false;
    }
    match pfile.split_once('*') {
        None => pfile == file,
        Some((pre, post)) => {
            file.len() >= pre.len() + post.len() && file.starts_with(pre) && file.ends_with(post)
        }
    }
}

// ---- helpers: Kubernetes ----------------------------------------------------------------------

/// The resource files a kustomization.yaml lists, relative to its directory.
fn kustomization_resources(dir: &Path) -> Vec<PathBuf> {
    let kustomization = yaml_doc(&dir.join("kustomization.yaml"));
    assert_eq!(
        kustomization["kind"].as_str(),
        Some("Kustomization"),
        "{}/kustomization.yaml kind",
        rel(dir)
    );
    seq(&kustomization["resources"], "kustomization resources")
        .iter()
        .map(|r| dir.join(str_of(r, "resource")))
        .collect()
}

/// Every Kubernetes object of a kustomization directory, with the file it came from.
fn k8s_objects(dir: &Path) -> Vec<(PathBuf, Value)> {
    kustomization_resources(dir)
        .into_iter()
        .flat_map(|file| {
            yaml_docs(&file)
                .into_iter()
                .map(move |doc| (file.clone(), doc))
        })
        .collect()
}

fn of_kind<'a>(objects: &'a [(PathBuf, Value)], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|(_, o)| o["kind"].as_str() == Some(kind))
        .map(|(_, o)| o)
        .collect()
}

fn name_of(object: &Value) -> &str {
    str_of(&object["metadata"]["name"], "metadata.name")
}

/// A longhaul container in a Deployment, with the proxy.toml its ConfigMap gives it.
struct LonghaulPod {
    dir: PathBuf,
    deployment: Value,
    container: Value,
    config_text: String,
    config: toml::Table,
}

impl LonghaulPod {
    fn what(&self) -> String {
        format!(
            "{} deployment/{} container {}",
            rel(&self.dir),
            name_of(&self.deployment),
            str_of(&self.container["name"], "container name")
        )
    }

    fn pod_spec(&self) -> &Value {
        &self.deployment["spec"]["template"]["spec"]
    }

    /// A container port given by number or by name.
    fn resolve_port(&self, port: &Value) -> u16 {
        if let Some(n) = port.as_u64() {
            return n as u16;
        }
        let name = str_of(port, "port");
        seq(&self.container["ports"], "container ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("{}: no container port named `{name}`", self.what()))
            as u16
    }
}

/// Every container started as `longhaul --config FILE`, in both kustomization directories. Each
/// must read FILE from a ConfigMap mounted in its pod; the ConfigMap must be in the same directory.
fn longhaul_pods() -> Vec<LonghaulPod> {
    let mut out = Vec::new();
    for dir in kustomize_dirs() {
        let objects = k8s_objects(&dir);
        for deployment in of_kind(&objects, "Deployment") {
            let spec = &deployment["spec"]["template"]["spec"];
            for container in seq(&spec["containers"], "containers") {
                let args: Vec<String> = words(&container["command"])
                    .into_iter()
                    .chain(words(&container["args"]))
                    .collect();
                let Some(config_path) = flag_value(&args, "--config") else {
                    continue;
                };
                let what = format!("{} deployment/{}", rel(&dir), name_of(deployment));
                let (mount_dir, file) = config_path
                    .rsplit_once('/')
                    .unwrap_or_else(|| panic!("{what}: --config {config_path} is not absolute"));
                let mount = seq(&container["volumeMounts"], "volumeMounts")
                    .iter()
                    .find(|m| m["mountPath"].as_str() == Some(mount_dir))
                    .unwrap_or_else(|| panic!("{what}: nothing is mounted at {mount_dir}"));
                let volume_name = str_of(&mount["name"], "volumeMount name");
                let volume = seq(&spec["volumes"], "volumes")
                    .iter()
                    .find(|v| v["name"].as_str() == Some(volume_name))
                    .unwrap_or_else(|| panic!("{what}: no volume `{volume_name}`"));
                let cm_name = str_of(
                    &volume["configMap"]["name"],
                    "the config volume's configMap.name",
                );
                let configmap = of_kind(&objects, "ConfigMap")
                    .into_iter()
                    .find(|c| name_of(c) == cm_name)
                    .unwrap_or_else(|| {
                        panic!("{what}: ConfigMap `{cm_name}` is not in {}", rel(&dir))
                    });
                let config_text = str_of(
                    &configmap["data"][file],
                    &format!("ConfigMap {cm_name} data.{file}"),
                )
                .to_string();
                let config = parse_toml(&config_text, &format!("ConfigMap {cm_name} {file}"));
                out.push(LonghaulPod {
                    dir: dir.clone(),
                    deployment: deployment.clone(),
                    container: container.clone(),
                    config_text,
                    config,
                });
            }
        }
    }
    out
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        str_of(k, "label").to_string(),
                        str_of(v, "label value").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn all_deployments() -> Vec<(PathBuf, Value)> {
    kustomize_dirs()
        .into_iter()
        .flat_map(|dir| {
            let objects = k8s_objects(&dir);
            of_kind(&objects, "Deployment")
                .into_iter()
                .map(|d| (dir.clone(), d.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

// ---- helpers: systemd -------------------------------------------------------------------------

struct Unit {
    /// (section, key, value) of every active line.
    entries: Vec<(String, String, String)>,
    /// Commented-out `Key=value` lines, without the comment sign.
    commented: Vec<(String, String)>,
}

impl Unit {
    fn values(&self, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(_, k, _)| k == key)
            .map(|(_, _, v)| v.as_str())
            .collect()
    }

    /// The effective value of `key` (the last assignment wins, as in systemd).
    fn value(&self, key: &str) -> Option<&str> {
        self.values(key).last().copied()
    }
}

fn unit_path() -> PathBuf {
    deploy_dir().join("systemd").join("longhaul.service")
}

fn socket_unit_path() -> PathBuf {
    deploy_dir().join("systemd").join("longhaul.socket")
}

fn unit() -> Unit {
    parse_unit(&unit_path())
}

fn parse_unit(path: &Path) -> Unit {
    let mut unit = Unit {
        entries: Vec::new(),
        commented: Vec::new(),
    };
    let mut section = String::new();
    for line in read(path).lines() {
        let t = line.trim();
        if let Some(c) = t.strip_prefix('#').or_else(|| t.strip_prefix(';')) {
            if let Some((k, v)) = c.trim().split_once('=')
                && !k.contains(' ')
                && !k.is_empty()
            {
                unit.commented.push((k.to_string(), v.to_string()));
            }
            continue;
        }
        if t.is_empty() {
            continue;
        }
        if t.starts_with('[') {
            section = t.trim_matches(['[', ']']).to_string();
            continue;
        }
        let (k, v) = t
            .split_once('=')
            .unwrap_or_else(|| panic!("{}: `{t}` is not Key=value", rel(path)));
        unit.entries
            .push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    unit
}

/// A copy of the unit whose commands run the freshly built binary, for `systemd-analyze`, which
/// checks that the ExecStart binary exists.
fn unit_for_analysis(dir: &TempDir) -> PathBuf {
    let bin = dir.path().join("longhaul");
    fs::copy(env!("CARGO_BIN_EXE_longhaul"), &bin).expect("copy the longhaul binary");
    let text = read(&unit_path()).replace("/usr/local/bin/longhaul", bin.to_str().unwrap());
    let path = dir.path().join("longhaul.service");
    fs::write(&path, text).unwrap();
    path
}

// ==== every YAML file ==========================================================================

#[test]
fn every_yaml_file_in_deploy_parses() {
    let files = yaml_files(&deploy_dir());
    assert!(
        files.len() >= 10,
        "expected the compose, Prometheus, Grafana and Kubernetes YAML files under deploy/, found {files:?}"
    );
    for file in files {
        let docs = yaml_docs(&file);
        assert!(!docs.is_empty(), "{} holds no YAML document", rel(&file));
        for doc in docs {
            assert!(
                doc.is_mapping(),
                "{}: every document should be a mapping",
                rel(&file)
            );
        }
    }
}

// ==== proxy.toml for containers ================================================================

#[test]
fn docker_proxy_toml_has_the_same_keys_as_root_proxy_toml() {
    let root = all_key_paths(&root_proxy_toml());
    let docker = all_key_paths(&docker_proxy_toml());
    let missing: Vec<_> = root.difference(&docker).collect();
    let extra: Vec<_> = docker.difference(&root).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "deploy/docker/proxy.toml should have the keys of proxy.toml: missing {missing:?}, extra {extra:?}"
    );
}

#[test]
fn docker_proxy_toml_listens_on_all_container_interfaces() {
    let config = docker_proxy_toml();
    for addr in listen_addrs(&config) {
        assert!(
            addr.ip().is_unspecified(),
            "deploy/docker/proxy.toml: listen {addr} is unreachable through a published port"
        );
    }
    let admin = admin_addr(&config);
    assert!(
        admin.ip().is_unspecified(),
        "deploy/docker/proxy.toml: admin {admin} on loopback cannot be scraped by Prometheus"
    );
}

#[test]
fn docker_proxy_toml_passes_longhaul_check() {
    assert_check_passes(&docker_proxy_toml_text(), "deploy/docker/proxy.toml");
}

#[test]
fn longhaul_check_rejects_a_deploy_config_with_an_unknown_key() {
    // The control for the `check` tests: a real checker refuses this copy.
    let text = docker_proxy_toml_text().replacen("[server]\n", "[server]\nno_such_key = 1\n", 1);
    assert!(text.contains("no_such_key"), "could not insert the bad key");
    let (code, all) = longhaul_check(&text);
    assert_eq!(
        code,
        Some(2),
        "`longhaul check` should exit 2 on an unknown key:\n{all}"
    );
    assert!(
        all.contains("no_such_key"),
        "the error should name the key:\n{all}"
    );
}

// ==== Dockerfile ===============================================================================

#[test]
fn dockerfile_is_a_multi_stage_locked_release_build() {
    let instructions = dockerfile();
    let froms: Vec<&Instruction> = instructions
        .iter()
        .filter(|i| i.keyword == "FROM")
        .collect();
    assert!(
        froms.len() >= 2,
        "the Dockerfile should have a builder and a runtime stage"
    );
    let builder = froms[0].args.split_whitespace().collect::<Vec<_>>();
    assert!(
        builder.len() == 3 && builder[1].eq_ignore_ascii_case("AS"),
        "the first stage should be named (FROM image AS builder): {:?}",
        froms[0].args
    );
    assert!(
        builder[0].starts_with("rust:"),
        "the builder stage should use a rust image"
    );
    let builder_name = builder[2];
    assert!(
        instructions
            .iter()
            .any(|i| i.keyword == "RUN" && i.args.contains("cargo build --release --locked")),
        "the builder should run `cargo build --release --locked`"
    );
    let runtime = final_stage(&instructions);
    assert!(
        !runtime[0].args.starts_with("rust:"),
        "the runtime stage should not be the rust toolchain image: {}",
        runtime[0].args
    );
    assert!(
        runtime.iter().any(|i| i.keyword == "COPY"
            && i.args.contains(&format!("--from={builder_name}"))
            && i.args.contains("longhaul")),
        "the runtime stage should copy the binary from the `{builder_name}` stage"
    );
}

#[test]
fn dockerfile_builder_rust_is_at_least_the_crate_rust_version() {
    let manifest = parse_toml(&read(&root().join("Cargo.toml")), "Cargo.toml");
    let needed = manifest["package"]["rust-version"]
        .as_str()
        .expect("Cargo.toml package.rust-version");
    let instructions = dockerfile();
    let arg = instructions
        .iter()
        .find_map(|i| {
            (i.keyword == "ARG")
                .then(|| i.args.strip_prefix("RUST_VERSION="))
                .flatten()
        })
        .expect("the Dockerfile should pin ARG RUST_VERSION=<x.y>");
    let version = |s: &str| -> (u32, u32) {
        let mut parts = s
            .split('.')
            .map(|p| p.parse::<u32>().expect("version number"));
        (parts.next().unwrap(), parts.next().unwrap_or(0))
    };
    assert!(
        version(arg) >= version(needed),
        "the builder's Rust {arg} is older than the crate's rust-version {needed}"
    );
    let from = instructions.iter().find(|i| i.keyword == "FROM").unwrap();
    assert!(
        from.args.contains("${RUST_VERSION}"),
        "the builder FROM should use ${{RUST_VERSION}}: {}",
        from.args
    );
}

#[test]
fn dockerfile_runs_as_a_non_root_numeric_user() {
    let instructions = dockerfile();
    let user = final_stage(&instructions)
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .expect("the runtime stage should set USER");
    let uid = user.args.split(':').next().unwrap();
    // Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
    let uid: u32 = uid
        .parse()
        .unwrap_or_else(|_| panic!("USER should be a numeric uid, got `{}`", user.args));
    assert_ne!(uid, 0, "the runtime image should not run as root");
}

#[test]
fn dockerfile_exposes_the_listen_and_admin_ports() {
    let config = docker_proxy_toml();
    let instructions = dockerfile();
    let exposed: BTreeSet<u16> = final_stage(&instructions)
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace())
        .map(|p| p.split('/').next().unwrap().parse().expect("EXPOSE port"))
        .collect();
    let mut wanted = listen_ports(&config);
    wanted.insert(admin_addr(&config).port());
    assert_eq!(
        exposed, wanted,
        "EXPOSE should list the listen and admin ports of deploy/docker/proxy.toml"
    );
}

#[test]
fn dockerfile_healthcheck_requests_healthz_on_the_admin_port() {
    let admin = admin_addr(&docker_proxy_toml()).port();
    let instructions = dockerfile();
    let health = final_stage(&instructions)
        .iter()
        .find(|i| i.keyword == "HEALTHCHECK")
        .expect("the runtime stage should have a HEALTHCHECK");
    assert!(
        health.args.contains("/healthz"),
        "HEALTHCHECK should request /healthz: {}",
        health.args
    );
    assert!(
        health
            .args
            .contains(&format!("/dev/tcp/127.0.0.1/{admin} ")),
        "HEALTHCHECK should connect to the admin port {admin}: {}",
        health.args
    );
    assert!(
        health.args.contains("CMD"),
        "HEALTHCHECK should run a command: {}",
        health.args
    );
}

#[test]
fn dockerfile_defaults_to_the_config_at_etc_longhaul() {
    let instructions = dockerfile();
    let runtime = final_stage(&instructions);
    assert!(
        runtime.iter().any(|i| i.keyword == "COPY"
            && i.args.split_whitespace().collect::<Vec<_>>()
                == ["deploy/docker/proxy.toml", "/etc/longhaul/proxy.toml"]),
        "the image should carry deploy/docker/proxy.toml at /etc/longhaul/proxy.toml"
    );
    let entrypoint = runtime
        .iter()
        .rev()
        .find(|i| i.keyword == "ENTRYPOINT")
        .expect("ENTRYPOINT");
    let cmd = runtime
        .iter()
        .rev()
        .find(|i| i.keyword == "CMD")
        .expect("CMD");
    let entrypoint: Vec<String> =
        serde_json::from_str(&entrypoint.args).expect("ENTRYPOINT in exec (JSON) form");
    let cmd: Vec<String> = serde_json::from_str(&cmd.args).expect("CMD in exec (JSON) form");
    assert_eq!(entrypoint, ["/usr/local/bin/longhaul"]);
    assert_eq!(
        flag_value(&cmd, "--config").as_deref(),
        Some("/etc/longhaul/proxy.toml")
    );
}

#[test]
fn dockerfile_copy_sources_exist_in_the_build_context() {
    let services = compose_services();
    let (context, _) = compose_build(&compose_longhaul(&services).1).expect("longhaul build");
    for copy in dockerfile().iter().filter(|i| i.keyword == "COPY") {
        let tokens: Vec<&str> = copy.args.split_whitespace().collect();
        if tokens.iter().any(|t| t.starts_with("--from=")) {
            continue;
        }
        let paths: Vec<&&str> = tokens.iter().filter(|t| !t.starts_with("--")).collect();
        assert!(
            paths.len() >= 2,
            "COPY {} needs a source and a target",
            copy.args
        );
        for source in &paths[..paths.len() - 1] {
            assert!(
                context.join(source).exists(),
                "COPY source {source} is missing from the build context {}",
                context.display()
            );
        }
    }
}

// ==== compose ==================================================================================

#[test]
fn compose_referenced_paths_exist() {
    let services = compose_services();
    let mut checked = 0;
    for (name, service) in &services {
        if let Some((context, dockerfile)) = compose_build(service) {
            assert!(
                context.is_dir(),
                "service {name}: build context {} is missing",
                context.display()
            );
            assert!(
                dockerfile.is_file(),
                "service {name}: Dockerfile {} is missing",
                dockerfile.display()
            );
            checked += 2;
        }
        for (source, _) in compose_bind_mounts(service) {
            let path = docker_dir().join(&source);
            assert!(
                path.exists(),
                "service {name}: mounted {source} is missing ({})",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 8,
        "expected builds and bind mounts in compose.yaml, checked {checked}"
    );
}

#[test]
fn compose_has_backend_longhaul_prometheus_and_grafana() {
    let services = compose_services();
    let (longhaul, _) = compose_longhaul(&services);
    assert_eq!(longhaul, "longhaul");
    for name in ["backend", "prometheus", "grafana"] {
        compose_service(&services, name);
    }
    let backend = words(&compose_service(&services, "backend")["command"]);
    assert_eq!(
        backend.first().map(String::as_str),
        Some("backend-sim"),
        "the backend service should run `longhaul backend-sim`"
    );
    assert!(
        flag_value(&backend, "--stats-listen").is_some(),
        "the backend should serve /stats"
    );
    assert_eq!(
        compose_service(&services, "backend")["image"],
        compose_service(&services, "longhaul")["image"],
        "the backend should run the longhaul image"
    );
}

#[test]
fn compose_longhaul_publishes_its_listen_and_admin_ports() {
    let config = docker_proxy_toml();
    let services = compose_services();
    let (_, longhaul) = compose_longhaul(&services);
    let published = compose_container_ports(&longhaul);
    for port in listen_ports(&config) {
        assert!(
            published.contains(&port),
            "compose longhaul should publish listen port {port}"
        );
    }
    let admin = admin_addr(&config).port();
    assert!(
        published.contains(&admin),
        "compose longhaul should publish admin port {admin}"
    );
}

#[test]
fn compose_longhaul_mounts_docker_proxy_toml_where_its_command_reads_it() {
    let services = compose_services();
    let (_, longhaul) = compose_longhaul(&services);
    let config_path = flag_value(&words(&longhaul["command"]), "--config").unwrap();
    assert_eq!(config_path, "/etc/longhaul/proxy.toml");
    assert_eq!(
        mount_target(&longhaul, "./proxy.toml").as_deref(),
        Some(config_path.as_str()),
        "compose should mount ./proxy.toml at the --config path"
    );
}

#[test]
fn compose_backend_listens_where_docker_proxy_toml_sends_requests() {
    let services = compose_services();
    let servers = upstream_servers(&docker_proxy_toml());
    assert!(!servers.is_empty());
    for (host, port) in servers {
        let service = compose_service(&services, &host);
        let listen = flag_value(&words(&service["command"]), "--listen")
            .unwrap_or_else(|| panic!("compose service {host} has no --listen"));
        let addr = socket_addr(&listen, "backend --listen");
        assert_eq!(
            addr.port(),
            port,
            "upstream {host}:{port} vs the backend's --listen {listen}"
        );
        assert!(
            addr.ip().is_unspecified(),
            "the backend's --listen {listen} is unreachable from the longhaul container"
        );
    }
}

#[test]
fn compose_prometheus_scrapes_the_longhaul_admin_port() {
    let services = compose_services();
    let (longhaul, _) = compose_longhaul(&services);
    let admin = admin_addr(&docker_proxy_toml()).port();
    let targets = scrape_targets(&compose_prometheus_config());
    let wanted = format!("{longhaul}:{admin}");
    assert!(
        targets
            .iter()
            .any(|(_, t, path)| *t == wanted && path == "/metrics"),
        "deploy/docker/prometheus.yml should scrape {wanted}/metrics, has {targets:?}"
    );
    let prometheus = compose_service(&services, "prometheus");
    let config_file = words(&prometheus["command"])
        .iter()
        .find_map(|w| w.strip_prefix("--config.file=").map(str::to_string))
        .expect("prometheus --config.file");
    assert_eq!(
        mount_target(prometheus, "./prometheus.yml"),
        Some(config_file),
        "compose should mount ./prometheus.yml at prometheus's --config.file"
    );
}

#[test]
fn compose_prometheus_loads_the_alert_rules() {
    let services = compose_services();
    let prometheus = compose_service(&services, "prometheus");
    let target = mount_target(prometheus, "../../dashboards/alerts.yml")
        .expect("compose should mount ../../dashboards/alerts.yml into prometheus");
    let config = compose_prometheus_config();
    let rule_files: Vec<&str> = seq(&config["rule_files"], "rule_files")
        .iter()
        .map(|r| str_of(r, "rule file"))
        .collect();
    assert!(
        rule_files.iter().any(|p| glob_matches(p, &target)),
        "rule_files {rule_files:?} should match the mounted alerts at {target}"
    );
}

#[test]
fn prometheus_job_label_matches_the_alert_rules() {
    // dashboards/alerts.yml selects on job="...": the compose scrape job and the PodMonitor's job
    // label must produce that value.
    let alerts = read(&root().join("dashboards/alerts.yml"));
    let jobs: BTreeSet<&str> = alerts
        .split("job=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    let compose_jobs: BTreeSet<String> = scrape_targets(&compose_prometheus_config())
        .into_iter()
        .map(|(job, _, _)| job)
        .collect();
    for job in &jobs {
        assert!(
            compose_jobs.contains(*job),
            "alerts select job=\"{job}\" but deploy/docker/prometheus.yml has jobs {compose_jobs:?}"
        );
    }
    let objects = k8s_objects(&k8s_dir());
    let monitor = of_kind(&objects, "PodMonitor")
        .into_iter()
        .next()
        .expect("a PodMonitor");
    let job_label = str_of(&monitor["spec"]["jobLabel"], "PodMonitor jobLabel");
    for (dir, deployment) in all_deployments() {
        let pod_labels = labels(&deployment["spec"]["template"]["metadata"]["labels"]);
        let job = pod_labels.get(job_label).unwrap_or_else(|| {
            panic!(
                "{} deployment/{} lacks the jobLabel {job_label}",
                rel(&dir),
                name_of(&deployment)
            )
        });
        for wanted in &jobs {
            assert_eq!(job, wanted, "PodMonitor job for {}", name_of(&deployment));
        }
    }
}

#[test]
fn compose_grafana_provisions_the_dashboard_and_prometheus() {
    let services = compose_services();
    let grafana = compose_service(&services, "grafana");
    assert_eq!(
        mount_target(grafana, "./grafana/provisioning").as_deref(),
        Some("/etc/grafana/provisioning")
    );
    let dashboard = mount_target(grafana, "../../dashboards/longhaul.json")
        .expect("compose should mount ../../dashboards/longhaul.json into grafana");
    let dashboard_dir = dashboard.rsplit_once('/').unwrap().0;
    let provisioning = docker_dir().join("grafana/provisioning");

    let providers: Vec<Value> = yaml_files(&provisioning.join("dashboards"))
        .iter()
        .flat_map(|f| seq(&yaml_doc(f)["providers"], "providers").to_vec())
        .collect();
    assert!(
        providers.iter().any(|p| p["type"].as_str() == Some("file")
            && p["options"]["path"].as_str() == Some(dashboard_dir)),
        "a dashboard provider should load {dashboard_dir}, where longhaul.json is mounted"
    );

    let datasources: Vec<Value> = yaml_files(&provisioning.join("datasources"))
        .iter()
        .flat_map(|f| seq(&yaml_doc(f)["datasources"], "datasources").to_vec())
        .collect();
    let prometheus_port = compose_container_ports(compose_service(&services, "prometheus"));
    assert!(
        prometheus_port.contains(&9090),
        "compose prometheus should serve 9090"
    );
    assert!(
        datasources
            .iter()
            .any(|d| d["type"].as_str() == Some("prometheus")
                && d["url"].as_str() == Some("http://prometheus:9090")
                && d["isDefault"].as_bool() == Some(true)),
        "the default Grafana data source should be http://prometheus:9090"
    );
}

// ==== Kubernetes ===============================================================================

#[test]
fn kustomizations_list_existing_files_and_every_manifest() {
    for dir in kustomize_dirs() {
        let listed: BTreeSet<PathBuf> = kustomization_resources(&dir).into_iter().collect();
        for file in &listed {
            assert!(file.is_file(), "{} lists missing {}", rel(&dir), rel(file));
        }
        let present: BTreeSet<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .filter(|p| p.file_name().unwrap() != "kustomization.yaml")
            .collect();
        let unlisted: Vec<_> = present.difference(&listed).map(|p| rel(p)).collect();
        assert!(
            unlisted.is_empty(),
            "{}/kustomization.yaml does not list {unlisted:?}",
            rel(&dir)
        );
    }
}

#[test]
fn kubernetes_manifests_have_the_expected_kinds() {
    for dir in kustomize_dirs() {
        for (file, object) in k8s_objects(&dir) {
            for field in ["apiVersion", "kind"] {
                assert!(object[field].is_string(), "{}: missing {field}", rel(&file));
            }
            name_of(&object);
        }
    }
    let kinds = |dir: &Path| -> BTreeMap<String, String> {
        k8s_objects(dir)
            .iter()
            .map(|(_, o)| {
                (
                    str_of(&o["kind"], "kind").to_string(),
                    str_of(&o["apiVersion"], "apiVersion").to_string(),
                )
            })
            .collect()
    };
    let base = kinds(&k8s_dir());
    for (kind, api) in [
        ("ConfigMap", "v1"),
        ("Deployment", "apps/v1"),
        ("Service", "v1"),
        ("PodDisruptionBudget", "policy/v1"),
        ("PodMonitor", "monitoring.coreos.com/v1"),
    ] {
        assert_eq!(
            base.get(kind).map(String::as_str),
            Some(api),
            "deploy/kubernetes {kind}"
        );
    }
    let sidecar = kinds(&k8s_dir().join("sidecar"));
    for (kind, api) in [
        ("ConfigMap", "v1"),
        ("Deployment", "apps/v1"),
        ("Service", "v1"),
    ] {
        assert_eq!(
            sidecar.get(kind).map(String::as_str),
            Some(api),
            "sidecar {kind}"
        );
    }
}

#[test]
fn kubernetes_longhaul_containers_read_their_configmap() {
    let pods = longhaul_pods();
    let dirs: BTreeSet<PathBuf> = pods.iter().map(|p| p.dir.clone()).collect();
    assert_eq!(
        pods.len(),
        2,
        "one longhaul container in each kustomization"
    );
    assert_eq!(dirs.len(), 2, "the proxy tier and the sidecar example");
    for pod in &pods {
        let mount = seq(&pod.container["volumeMounts"], "volumeMounts")
            .iter()
            .find(|m| m["mountPath"].as_str() == Some("/etc/longhaul"))
            .unwrap_or_else(|| panic!("{}: config not at /etc/longhaul", pod.what()));
        assert_eq!(
            mount["readOnly"].as_bool(),
            Some(true),
            "{}: config mount",
            pod.what()
        );
    }
}

#[test]
fn kubernetes_sidecar_pod_runs_the_app_and_longhaul_in_front_of_it() {
    let pods = longhaul_pods();
    let sidecar = pods
        .iter()
        .find(|p| p.dir.ends_with("sidecar"))
        .expect("the sidecar example");
    let containers = seq(&sidecar.pod_spec()["containers"], "containers");
    assert!(
        containers.len() >= 2,
        "the sidecar pod should run the app and longhaul"
    );
    // longhaul forwards to the app over the pod's loopback.
    for (host, _) in upstream_servers(&sidecar.config) {
        assert!(
            host == "127.0.0.1",
            "the sidecar's upstream should be the app on the pod's 127.0.0.1, not {host}"
        );
    }
}

#[test]
fn kubernetes_container_ports_match_the_configmap_listen_and_admin_ports() {
    for pod in longhaul_pods() {
        let http = pod.resolve_port(&Value::String("http".into()));
        let admin = pod.resolve_port(&Value::String("admin".into()));
        assert_eq!(
            listen_ports(&pod.config),
            BTreeSet::from([http]),
            "{}: port `http` should be the ConfigMap's [server] listen port",
            pod.what()
        );
        assert_eq!(
            admin,
            admin_addr(&pod.config).port(),
            "{}: port `admin` should be the ConfigMap's [admin] listen port",
            pod.what()
        );
    }
}

#[test]
fn kubernetes_listeners_bind_the_pod_ip() {
    // The kubelet probes and Prometheus connect to the pod IP, not to the pod's loopback.
    for pod in longhaul_pods() {
        let admin = admin_addr(&pod.config);
        assert!(
            admin.ip().is_unspecified(),
            "{}: admin {admin} is unreachable",
            pod.what()
        );
        for addr in listen_addrs(&pod.config) {
            assert!(
                addr.ip().is_unspecified(),
                "{}: listen {addr} is unreachable",
                pod.what()
            );
        }
    }
}

#[test]
fn kubernetes_probes_use_healthz_and_readyz_on_the_admin_port() {
    for pod in longhaul_pods() {
        let admin = admin_addr(&pod.config).port();
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &pod.container[probe]["httpGet"];
            assert_eq!(
                get["path"].as_str(),
                Some(path),
                "{}: {probe} path",
                pod.what()
            );
            assert_eq!(
                pod.resolve_port(&get["port"]),
                admin,
                "{}: {probe} should hit the admin port",
                pod.what()
            );
        }
    }
}

#[test]
fn kubernetes_configmap_proxy_toml_passes_longhaul_check() {
    for pod in longhaul_pods() {
        assert_check_passes(&pod.config_text, &pod.what());
    }
}

#[test]
fn kubernetes_configmaps_use_only_keys_of_root_proxy_toml() {
    let known = all_key_paths(&root_proxy_toml());
    for pod in longhaul_pods() {
        let unknown: Vec<_> = all_key_paths(&pod.config)
            .into_iter()
            .filter(|k| !known.contains(k))
            .collect();
        assert!(
            unknown.is_empty(),
            "{}: keys not in proxy.toml: {unknown:?}",
            pod.what()
        );
    }
}

#[test]
fn kubernetes_services_send_clients_to_the_longhaul_listen_port() {
    let pods = longhaul_pods();
    for dir in kustomize_dirs() {
        let objects = k8s_objects(&dir);
        let services = of_kind(&objects, "Service");
        assert!(!services.is_empty(), "{} has no Service", rel(&dir));
        for service in services {
            let selector = labels(&service["spec"]["selector"]);
            let pod = pods
                .iter()
                .find(|p| {
                    p.dir == dir
                        && selector_matches(
                            &selector,
                            &labels(&p.deployment["spec"]["template"]["metadata"]["labels"]),
                        )
                })
                .unwrap_or_else(|| {
                    panic!(
                        "service/{} selects no longhaul pod in {}",
                        name_of(service),
                        rel(&dir)
                    )
                });
            let listen = listen_ports(&pod.config);
            for port in seq(&service["spec"]["ports"], "service ports") {
                let target = pod.resolve_port(&port["targetPort"]);
                assert!(
                    listen.contains(&target),
                    "service/{} targets {target}, not longhaul's listen port {listen:?}",
                    name_of(service)
                );
            }
        }
    }
}

#[test]
fn kubernetes_deployment_selectors_match_their_pod_labels() {
    for (dir, deployment) in all_deployments() {
        let selector = labels(&deployment["spec"]["selector"]["matchLabels"]);
        let pod = labels(&deployment["spec"]["template"]["metadata"]["labels"]);
        assert!(
            selector_matches(&selector, &pod),
            "{} deployment/{}: selector {selector:?} does not match pod labels {pod:?}",
            rel(&dir),
            name_of(&deployment)
        );
    }
}

#[test]
fn kubernetes_pod_monitor_scrapes_metrics_on_every_longhaul_admin_port() {
    let objects = k8s_objects(&k8s_dir());
    let monitors = of_kind(&objects, "PodMonitor");
    assert_eq!(monitors.len(), 1, "one PodMonitor");
    let monitor = monitors[0];
    let selector = labels(&monitor["spec"]["selector"]["matchLabels"]);
    let endpoints = seq(
        &monitor["spec"]["podMetricsEndpoints"],
        "podMetricsEndpoints",
    );
    assert_eq!(endpoints.len(), 1);
    let endpoint = &endpoints[0];
    assert_eq!(endpoint["path"].as_str().unwrap_or("/metrics"), "/metrics");
    for pod in longhaul_pods() {
        let pod_labels = labels(&pod.deployment["spec"]["template"]["metadata"]["labels"]);
        assert!(
            selector_matches(&selector, &pod_labels),
            "the PodMonitor should select {} (labels {pod_labels:?})",
            pod.what()
        );
        assert_eq!(
            pod.resolve_port(&endpoint["port"]),
            admin_addr(&pod.config).port(),
            "{}: the PodMonitor should scrape the admin port",
            pod.what()
        );
    }
}

#[test]
fn kubernetes_containers_are_locked_down_with_resource_limits() {
    for (dir, deployment) in all_deployments() {
        let spec = &deployment["spec"]["template"]["spec"];
        for container in seq(&spec["containers"], "containers") {
            let what = format!(
                "{} deployment/{} container {}",
                rel(&dir),
                name_of(&deployment),
                str_of(&container["name"], "container name")
            );
            let sc = &container["securityContext"];
            let non_root = sc["runAsNonRoot"]
                .as_bool()
                .or(spec["securityContext"]["runAsNonRoot"].as_bool());
            assert_eq!(non_root, Some(true), "{what}: runAsNonRoot");
            assert_eq!(
                sc["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{what}: readOnlyRootFilesystem"
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{what}: allowPrivilegeEscalation"
            );
            let drop = words(&sc["capabilities"]["drop"]);
            assert_eq!(drop, ["ALL"], "{what}: capabilities.drop");
            assert!(
                sc["capabilities"]["add"].is_null(),
                "{what}: reverse mode needs no capabilities"
            );
            for bound in ["requests", "limits"] {
                for resource in ["cpu", "memory"] {
                    assert!(
                        !container["resources"][bound][resource].is_null(),
                        "{what}: resources.{bound}.{resource}"
                    );
                }
            }
        }
    }
}

#[test]
fn kubernetes_run_as_user_is_the_image_user() {
    let instructions = dockerfile();
    let user = final_stage(&instructions)
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .expect("USER");
    let uid: u64 = user
        .args
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("numeric USER");
    for (dir, deployment) in all_deployments() {
        let run_as =
            deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"].as_u64();
        assert_eq!(
            run_as,
            Some(uid),
            "{} deployment/{}: runAsUser should be the image's USER",
            rel(&dir),
            name_of(&deployment)
        );
    }
}

#[test]
fn kubernetes_termination_grace_covers_prestop_and_drain() {
    for pod in longhaul_pods() {
        let grace = pod.pod_spec()["terminationGracePeriodSeconds"]
            .as_u64()
            .unwrap_or(30);
        let pre_stop = words(&pod.container["lifecycle"]["preStop"]["exec"]["command"]);
        let sleep = match pre_stop.as_slice() {
            [cmd, secs] if cmd == "sleep" => secs.parse::<u64>().expect("sleep seconds"),
            [] => 0,
            other => panic!("{}: unexpected preStop {other:?}", pod.what()),
        };
        let drain = drain_timeout(&pod.config).as_secs();
        assert!(
            grace > sleep + drain,
            "{}: terminationGracePeriodSeconds {grace} should exceed preStop {sleep}s + drain_timeout {drain}s",
            pod.what()
        );
    }
}

#[test]
fn kubernetes_readme_explains_pool_sizing_with_a_worked_example() {
    let readme = read(&k8s_dir().join("README.md"));
    for needle in [
        "max_size",
        "replicas",
        "servers",
        "maxSurge",
        "Worked example",
    ] {
        assert!(
            readme.contains(needle),
            "deploy/kubernetes/README.md should mention {needle}"
        );
    }
    assert!(
        readme.contains("x servers x max_size"),
        "the README should state the connection bound (pods x servers x max_size)"
    );
}

#[test]
fn kubernetes_manifests_pass_kubernetes_validate() {
    // `pip install kubernetes-validate` (.ci/run does).
    if !support::tools::have("kubernetes-validate") {
        return;
    }
    // Its offline schemas cover the built-in kinds only: leave out kustomization.yaml and files of
    // custom resources (monitoring.coreos.com).
    let mut files = Vec::new();
    for dir in kustomize_dirs() {
        for file in kustomization_resources(&dir) {
            let builtin = yaml_docs(&file)
                .iter()
                .all(|d| !str_of(&d["apiVersion"], "apiVersion").contains(".coreos.com"));
            if builtin {
                files.push(file);
            }
        }
    }
    assert!(
        files.len() >= 7,
        "expected the built-in manifests, found {files:?}"
    );
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let all = output_text(&out);
    assert!(out.status.success(), "kubernetes-validate failed:\n{all}");
    for file in &files {
        let name = file.to_str().unwrap();
        assert!(
            all.lines()
                .any(|l| l.contains(name) && l.contains("passed")),
            "kubernetes-validate did not pass {}:\n{all}",
            rel(file)
        );
    }
}

// ==== systemd ==================================================================================

#[test]
fn systemd_unit_runs_longhaul_with_the_etc_config() {
    let unit = unit();
    assert_eq!(
        unit.value("ExecStart"),
        Some("/usr/local/bin/longhaul --config /etc/longhaul/proxy.toml")
    );
    assert_eq!(
        unit.value("ExecReload"),
        Some(
            "/usr/local/bin/longhaul upgrade --config /etc/longhaul/proxy.toml --pid-file /run/longhaul/longhaul.pid"
        )
    );
    assert_eq!(unit.value("Restart"), Some("on-failure"));
    assert_eq!(
        unit.value("RestartPreventExitStatus"),
        Some("2"),
        "a bad config (exit 2) should not restart in a loop"
    );
    assert_eq!(unit.value("WantedBy"), Some("multi-user.target"));
}

#[test]
fn systemd_unit_follows_the_new_main_pid_after_an_upgrade() {
    let unit = unit();
    assert_eq!(
        (
            unit.value("Type"),
            unit.value("NotifyAccess"),
            unit.value("RuntimeDirectory")
        ),
        (Some("notify"), Some("all"), Some("longhaul"))
    );
}

#[test]
fn systemd_unit_raises_the_file_descriptor_limit() {
    let unit = unit();
    let nofile: u64 = unit
        .value("LimitNOFILE")
        .expect("LimitNOFILE")
        .split(':')
        .next_back()
        .unwrap()
        .parse()
        .expect("LimitNOFILE number");
    let max_connections = root_proxy_toml()["server"]["max_connections"]
        .as_integer()
        .unwrap_or(10000) as u64;
    assert!(
        nofile > max_connections,
        "LimitNOFILE {nofile} should exceed [server] max_connections {max_connections}"
    );
}

#[test]
fn systemd_unit_has_the_hardening_directives() {
    let unit = unit();
    let user = unit.value("DynamicUser") == Some("yes")
        || unit.value("User").is_some_and(|u| u != "root" && u != "0");
    assert!(
        user,
        "the unit should run as DynamicUser=yes or a dedicated User="
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert_eq!(unit.value(key), Some(value), "longhaul.service {key}");
    }
    let filters = unit.values("SystemCallFilter");
    assert!(
        filters.contains(&"@system-service"),
        "SystemCallFilter=@system-service"
    );
    assert!(
        filters
            .iter()
            .any(|f| f.starts_with('~') && f.contains("@privileged")),
        "SystemCallFilter should deny @privileged"
    );
}

#[test]
fn systemd_unit_grants_cap_net_admin_only_in_comments() {
    let unit = unit();
    assert_eq!(
        unit.value("CapabilityBoundingSet"),
        Some(""),
        "no capabilities in reverse mode"
    );
    assert_eq!(unit.value("AmbientCapabilities").unwrap_or(""), "");
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let commented: Vec<&str> = unit
            .commented
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            commented,
            ["CAP_NET_ADMIN"],
            "a commented-out {key}=CAP_NET_ADMIN line for transparent mode, and nothing else"
        );
    }
}

#[test]
fn systemd_unit_stop_timeout_covers_the_drain_timeout() {
    let unit = unit();
    let stop = humantime::parse_duration(unit.value("TimeoutStopSec").expect("TimeoutStopSec"))
        .expect("TimeoutStopSec duration");
    let drain = drain_timeout(&root_proxy_toml());
    assert!(
        stop > drain,
        "TimeoutStopSec {stop:?} should exceed drain_timeout {drain:?}"
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if !support::tools::have("systemd-analyze") {
        return;
    }
    let dir = TempDir::new();
    let path = unit_for_analysis(&dir);
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let all = output_text(&out);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{all}"
    );
    // Unknown keys and bad values are only warnings, exit 0: any line about our file fails.
    let complaints: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("longhaul.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify warns:\n{all}"
    );
}

#[test]
fn systemd_analyze_security_rates_the_unit_exposure_low() {
    if !support::tools::have("systemd-analyze") {
        return;
    }
    let dir = TempDir::new();
    let path = unit_for_analysis(&dir);
    // --offline needs systemd 250 or newer; --threshold=20 fails above an exposure of 2.0 ("OK").
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20", "--no-pager"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze security");
    let all = output_text(&out);
    if all.contains("unrecognized option") || all.contains("Unknown option") {
        support::tools::skip(&format!(
            "this systemd-analyze has no `security --offline`:\n{all}"
        ));
        return;
    }
    assert!(
        out.status.success(),
        "systemd-analyze security rates longhaul.service above 2.0:\n{all}"
    );
    assert!(
        all.contains("Overall exposure level"),
        "unexpected output:\n{all}"
    );
}

#[test]
fn systemd_socket_listens_where_proxy_toml_does() {
    let socket = parse_unit(&socket_unit_path());
    let config = root_proxy_toml();
    let mut expected: Vec<String> = config["server"]["listen"]
        .as_array()
        .expect("[server] listen is a list")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    expected.push(config["admin"]["listen"].as_str().unwrap().to_string());
    assert_eq!(socket.values("ListenStream"), expected);
}

#[test]
fn systemd_socket_activates_the_service() {
    let socket = parse_unit(&socket_unit_path());
    assert_eq!(
        (socket.value("Service"), socket.value("WantedBy")),
        (Some("longhaul.service"), Some("sockets.target"))
    );
}

#[test]
fn systemd_analyze_verify_accepts_the_socket_unit() {
    if !support::tools::have("systemd-analyze") {
        return;
    }
    let dir = TempDir::new();
    let service = unit_for_analysis(&dir);
    let socket = dir.path().join("longhaul.socket");
    fs::copy(socket_unit_path(), &socket).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&socket)
        .arg(&service)
        .output()
        .expect("run systemd-analyze verify");
    let all = output_text(&out);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{all}"
    );
    let complaints: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("longhaul.socket") || l.contains("longhaul.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify warns:\n{all}"
    );
}

// ---- transparent mode -------------------------------------------------------------------------
// The iptables and nftables scripts are exercised for real in tests/transparent.rs.

#[test]
fn transparent_example_config_passes_longhaul_check() {
    let path = root().join("deploy/transparent/transparent.toml");
    assert_check_passes(&read(&path), "deploy/transparent/transparent.toml");
}

#[test]
fn transparent_scripts_exclude_the_mark_the_example_config_sets() {
    let config = parse_toml(
        &read(&root().join("deploy/transparent/transparent.toml")),
        "transparent.toml",
    );
    let mark = config["transparent"]["mark"].as_integer().expect("mark");
    let default_mark = format!("mark=0x{mark:x}");
    for script in ["iptables.sh", "nftables.sh"] {
        let text = read(&root().join("deploy/transparent").join(script));
        assert!(
            text.contains(&default_mark),
            "{script} should default to the example config's mark ({default_mark})"
        );
    }
}
