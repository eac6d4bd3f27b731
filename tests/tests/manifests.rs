//! The Kubernetes manifests under conf/ against a real kube-apiserver and against ipamd itself:
//! every object applies, the RBAC grants exactly what ipamd calls, the DaemonSet sets exactly
//! the variables ipamd reads with ipamd's own defaults, every path variable lands on the host
//! path it must, and the commands the DaemonSet runs (`ipamd init`, `ipamd probe`) do their job.
//!
//! Needs root, etcd (Debian etcd-server), the kube-apiserver that tests/kube/build-apiserver.sh
//! builds, and the built workspace binaries; fails when any is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::kube::ApiServer;
use harness::netns::{require_root, Netns};
use harness::node::Node;
use ipamd::config::Config;
use ipamd::install::{self, InstallConfig};
use ipamd::sgp;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{pinned_kind, Scope};
use kube::Client;
use serde_json::Value;

const ACCOUNT: &str = "system:serviceaccount:kube-system:vpc-cni";

fn conf_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../conf")
}

/// Every YAML file under conf/, sorted, with the documents each holds.
fn manifests() -> Vec<(PathBuf, Vec<Value>)> {
    let mut files = Vec::new();
    collect_yaml(&conf_dir(), &mut files);
    files.sort();
    assert!(!files.is_empty(), "no YAML under {}", conf_dir().display());
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            (path, docs)
        })
        .collect()
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_yaml(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

fn all_objects() -> Vec<Value> {
    manifests().into_iter().flat_map(|(_, docs)| docs).collect()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("conf/ has no {kind} {name}"))
}

fn gvk(object: &Value) -> GroupVersionKind {
    let api_version = object["apiVersion"].as_str().expect("apiVersion");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    GroupVersionKind::gvk(group, version, object["kind"].as_str().expect("kind"))
}

fn name_of(object: &Value) -> String {
    let name = object["metadata"]["name"].as_str().expect("metadata.name");
    format!("{} {name}", object["kind"].as_str().unwrap_or("?"))
}

async fn start() -> (ApiServer, Client) {
    let server = ApiServer::start()
        .await
        .unwrap_or_else(|e| panic!("this suite needs a real kube-apiserver: {e:#}"));
    let client = server.client().await.expect("admin client");
    (server, client)
}

/// Server-side apply of one object of any kind, in `default` when a namespaced object names
/// no namespace (as `kubectl apply` does); returns what the server stored.
async fn apply(server: &ApiServer, client: &Client, object: &Value) -> DynamicObject {
    let what = name_of(object);
    let (resource, caps) = pinned_kind(client, &gvk(object))
        .await
        .unwrap_or_else(|e| panic!("{what}: the API server does not serve its kind: {e}"));
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default");
            server.ensure_namespace(client, ns).await.unwrap();
            Api::namespaced_with(client.clone(), ns, &resource)
        }
    };
    let name = object["metadata"]["name"].as_str().unwrap();
    let params = PatchParams::apply("vpc-cni-manifests").force();
    api.patch(name, &params, &Patch::Apply(object))
        .await
        .unwrap_or_else(|e| panic!("{what} rejected: {e}\n{}", server.log_tail(10)))
}

async fn wait_established(client: &Client, name: &str) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let crd = crds.get(name).await.unwrap();
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        if conditions
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "crd {name} not established after 30s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What must be there, so that a manifest dropped from conf/ fails here too.
const EXPECTED_OBJECTS: &[(&str, &str)] = &[
    (
        "CustomResourceDefinition",
        "securitygrouppolicies.vpcresources.k8s.aws",
    ),
    ("ServiceAccount", "vpc-cni"),
    ("ClusterRole", "vpc-cni"),
    ("ClusterRoleBinding", "vpc-cni"),
    ("ConfigMap", "vpc-cni-config"),
    ("DaemonSet", "vpc-cni"),
    ("SecurityGroupPolicy", "catalog"),
];

#[tokio::test]
async fn every_object_under_conf_applies() {
    let (server, client) = start().await;
    let objects = all_objects();
    for (kind, name) in EXPECTED_OBJECTS {
        object(&objects, kind, name);
    }

    // Definitions first: their custom resources can only be applied once they are served.
    let (crds, rest): (Vec<&Value>, Vec<&Value>) = objects
        .iter()
        .partition(|o| o["kind"] == "CustomResourceDefinition");
    for crd in crds {
        let stored = apply(&server, &client, crd).await;
        wait_established(&client, &stored.metadata.name.unwrap()).await;
    }
    for object in rest {
        let stored = apply(&server, &client, object).await;
        assert!(
            stored.metadata.uid.is_some(),
            "{} not stored",
            name_of(object)
        );
    }
}

/// (verb, API group, resource, subresource): everything ipamd calls, and so everything the
/// ClusterRole grants.
const GRANTED: &[(&str, &str, &str, &str)] = &[
    ("get", "", "pods", ""),
    ("list", "", "pods", ""),
    ("watch", "", "pods", ""),
    ("patch", "", "pods", ""),
    ("list", "", "serviceaccounts", ""),
    ("watch", "", "serviceaccounts", ""),
    ("list", "vpcresources.k8s.aws", "securitygrouppolicies", ""),
    ("watch", "vpcresources.k8s.aws", "securitygrouppolicies", ""),
    ("get", "", "nodes", ""),
    ("patch", "", "nodes", ""),
    ("patch", "", "nodes", "status"),
    ("create", "", "events", ""),
    ("patch", "", "events", ""),
];

/// Near misses that must stay denied.
const DENIED: &[(&str, &str, &str, &str)] = &[
    ("delete", "", "pods", ""),
    ("update", "", "pods", ""),
    ("create", "", "pods", ""),
    ("get", "", "secrets", ""),
    ("list", "", "configmaps", ""),
    ("get", "", "serviceaccounts", ""),
    ("delete", "", "nodes", ""),
    ("update", "", "nodes", "status"),
    (
        "create",
        "vpcresources.k8s.aws",
        "securitygrouppolicies",
        "",
    ),
    ("delete", "", "events", ""),
];

async fn allowed(client: &Client, (verb, group, resource, sub): (&str, &str, &str, &str)) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(ACCOUNT.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:kube-system".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource: Some(sub.into()),
                namespace: Some("default".into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await.unwrap();
    answer.status.is_some_and(|s| s.allowed)
}

/// Every (verb, group, resource/subresource) the ClusterRole's rules name.
fn role_grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap_or_else(|| panic!("not a list: {v}"))
            .iter()
            .map(|s| s.as_str().expect("string").to_string())
            .collect()
    };
    let mut grants = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    grants.insert((verb, group.clone(), resource.clone()));
                }
            }
        }
    }
    grants
}

#[tokio::test]
async fn service_account_may_do_exactly_what_ipamd_does() {
    let objects = all_objects();
    let expected: BTreeSet<(String, String, String)> = GRANTED
        .iter()
        .map(|(verb, group, resource, sub)| {
            let resource = match *sub {
                "" => resource.to_string(),
                sub => format!("{resource}/{sub}"),
            };
            (verb.to_string(), group.to_string(), resource)
        })
        .collect();
    let role = object(&objects, "ClusterRole", "vpc-cni");
    assert_eq!(
        role_grants(role),
        expected,
        "ClusterRole differs from what ipamd calls"
    );

    let (server, client) = start().await;
    for (kind, name) in [
        ("ServiceAccount", "vpc-cni"),
        ("ClusterRole", "vpc-cni"),
        ("ClusterRoleBinding", "vpc-cni"),
    ] {
        apply(&server, &client, object(&objects, kind, name)).await;
    }
    for &grant in GRANTED {
        assert!(allowed(&client, grant).await, "{ACCOUNT} may not {grant:?}");
    }
    for &grant in DENIED {
        assert!(!allowed(&client, grant).await, "{ACCOUNT} may {grant:?}");
    }
}

fn daemonset(objects: &[Value]) -> &Value {
    object(objects, "DaemonSet", "vpc-cni")
}

fn container<'a>(ds: &'a Value, list: &str, name: &str) -> &'a Value {
    ds["spec"]["template"]["spec"][list]
        .as_array()
        .unwrap_or_else(|| panic!("DaemonSet has no {list}"))
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("DaemonSet has no {list} entry {name}"))
}

fn ipamd_container(objects: &[Value]) -> &Value {
    container(daemonset(objects), "containers", "ipamd")
}

fn init_container(objects: &[Value]) -> &Value {
    container(daemonset(objects), "initContainers", "vpc-cni-init")
}

/// A container's `env` entries in order: name and literal value (None for valueFrom).
fn env_entries(container: &Value) -> Vec<(String, Option<String>)> {
    let entries = container["env"].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("env name").to_string();
            (name, e["value"].as_str().map(str::to_string))
        })
        .collect()
}

/// The keys and values of every ConfigMap the container takes with envFrom.
fn env_from(container: &Value, objects: &[Value]) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for source in container["envFrom"].as_array().cloned().unwrap_or_default() {
        let name = source["configMapRef"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("envFrom other than a ConfigMap: {source}"));
        let map = object(objects, "ConfigMap", name);
        for (k, v) in map["data"].as_object().expect("ConfigMap data") {
            vars.insert(k.clone(), v.as_str().expect("string value").to_string());
        }
    }
    vars
}

/// The environment the container starts with: envFrom, then env on top; `valueFrom` entries
/// get `downward` (the harness has no kubelet to resolve them).
fn effective_env(container: &Value, objects: &[Value], downward: &str) -> BTreeMap<String, String> {
    let mut env = env_from(container, objects);
    for (name, value) in env_entries(container) {
        env.insert(name, value.unwrap_or_else(|| downward.to_string()));
    }
    env
}

/// Variables only the init container's `ipamd init` uses; the daemon must not get them.
const INIT_ONLY: &[&str] = &[
    install::HOST_CNI_BIN_PATH,
    install::PLUGIN_BINARY,
    install::DISABLE_TCP_EARLY_DEMUX,
];

/// Variables ipamd reads that the DaemonSet leaves unset on purpose: in a pod, ipamd uses the
/// in-cluster ServiceAccount, not a kubeconfig.
const NOT_SHIPPED: &[&str] = &[sgp::KUBECONFIG];

/// Every variable the ipamd daemon reads and the DaemonSet must set.
fn daemon_reads() -> BTreeSet<&'static str> {
    let sgp = [
        sgp::ENABLE_POD_ENI,
        sgp::WARM_BRANCH_ENI_TARGET,
        sgp::MY_NODE_NAME,
    ];
    let install = install::ENV_VARS
        .iter()
        .copied()
        .filter(|v| !INIT_ONLY.contains(v));
    ipamd::config::ENV_VARS
        .iter()
        .copied()
        .chain(sgp)
        .chain(install)
        .chain(ipamd::firewall::ENV_VARS.iter().copied())
        .filter(|v| !NOT_SHIPPED.contains(v))
        .collect()
}

#[test]
fn ipamd_container_sets_exactly_what_ipamd_reads() {
    let objects = all_objects();
    let ipamd = ipamd_container(&objects);
    let entries = env_entries(ipamd);
    let mut named = BTreeSet::new();
    for (name, _) in &entries {
        assert!(named.insert(name.as_str()), "{name} is set twice");
    }
    let from_map = env_from(ipamd, &objects);
    for key in from_map.keys() {
        assert!(
            !named.contains(key.as_str()),
            "{key} is in env and in the ConfigMap"
        );
    }
    let set: BTreeSet<&str> = named
        .iter()
        .copied()
        .chain(from_map.keys().map(String::as_str))
        .collect();
    let reads = daemon_reads();
    let missing: Vec<_> = reads.difference(&set).collect();
    let unread: Vec<_> = set.difference(&reads).collect();
    assert!(
        missing.is_empty() && unread.is_empty(),
        "DaemonSet and ipamd disagree: not set {missing:?}, set but not read {unread:?}"
    );
    let node_name = ipamd["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == sgp::MY_NODE_NAME)
        .unwrap();
    assert_eq!(
        node_name["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
}

/// The shipped values are ipamd's own defaults, but for the differences named here.
#[test]
fn shipped_values_are_ipamd_defaults() {
    let objects = all_objects();
    let env = effective_env(ipamd_container(&objects), &objects, "node-a");
    let lookup = |name: &str| env.get(name).cloned();
    let shipped = Config::from_lookup(lookup).expect("the shipped values are a valid config");
    let defaults = Config::from_lookup(|_| None).unwrap();
    let mut shipped_map = shipped.as_env_map();
    let mut default_map = defaults.as_env_map();
    // Set so that turning prefix delegation on needs no second change, as aws-node ships it.
    assert_eq!(
        shipped_map.remove("WARM_PREFIX_TARGET").as_deref(),
        Some("1")
    );
    default_map.remove("WARM_PREFIX_TARGET");
    // The node's name comes from the downward API; ipamd has no default for it.
    assert_eq!(
        shipped_map.remove(sgp::MY_NODE_NAME).as_deref(),
        Some("node-a")
    );
    default_map.remove(sgp::MY_NODE_NAME);
    assert_eq!(shipped_map, default_map);

    let shipped_install = InstallConfig::from_lookup(lookup, &shipped).expect("valid install");
    let default_install = InstallConfig::from_lookup(|_| None, &defaults).unwrap();
    // In a DaemonSet, ipamd writes the node's conflist; run by hand it writes nothing.
    assert_eq!(
        shipped_install.conf_dir,
        Some(PathBuf::from("/host/etc/cni/net.d"))
    );
    let adjusted = InstallConfig {
        conf_dir: None,
        ..shipped_install
    };
    assert_eq!(adjusted, default_install);
}

#[test]
fn init_container_sets_only_what_ipamd_init_reads() {
    let objects = all_objects();
    let init = init_container(&objects);
    assert_eq!(init["command"], serde_json::json!(["ipamd", "init"]));
    let reads: BTreeSet<&str> = install::ENV_VARS
        .iter()
        .chain(ipamd::config::ENV_VARS)
        .copied()
        .collect();
    let names: Vec<String> = env_entries(init).into_iter().map(|(n, _)| n).collect();
    for name in &names {
        assert!(
            reads.contains(name.as_str()),
            "init sets {name}, which ipamd init does not read"
        );
    }
    for needed in [install::HOST_CNI_BIN_PATH, install::DISABLE_TCP_EARLY_DEMUX] {
        assert!(
            names.iter().any(|n| n == needed),
            "init does not set {needed}"
        );
    }
}

/// The host path a path inside `container` is, through its volume mounts.
fn host_path(ds: &Value, container: &Value, path: &str) -> Option<PathBuf> {
    let mounts = container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mount = mounts
        .iter()
        .filter(|m| path.starts_with(m["mountPath"].as_str().unwrap_or("\0")))
        .max_by_key(|m| m["mountPath"].as_str().unwrap().len())?;
    let volumes = ds["spec"]["template"]["spec"]["volumes"].as_array()?;
    let volume = volumes.iter().find(|v| v["name"] == mount["name"])?;
    let rest = Path::new(path)
        .strip_prefix(mount["mountPath"].as_str()?)
        .ok()?;
    Some(Path::new(volume["hostPath"]["path"].as_str()?).join(rest))
}

/// (container, variable, where on the host it must end up).
const HOST_PATHS: &[(&str, &str, &str)] = &[
    ("ipamd", "IPAMD_SOCKET_PATH", "/var/run/aws-node/ipamd.sock"),
    (
        "ipamd",
        "AWS_VPC_K8S_CNI_BACKING_STORE",
        "/var/run/aws-node/ipam.json",
    ),
    (
        "ipamd",
        "AWS_VPC_K8S_CNI_LOG_FILE",
        "/var/log/aws-routed-eni/ipamd.log",
    ),
    ("ipamd", "HOST_CNI_CONFDIR_PATH", "/etc/cni/net.d"),
    ("vpc-cni-init", "HOST_CNI_BIN_PATH", "/opt/cni/bin"),
];

#[test]
fn path_variables_land_on_their_host_paths() {
    let objects = all_objects();
    let ds = daemonset(&objects);
    for (name, variable, want) in HOST_PATHS {
        let list = if *name == "ipamd" {
            "containers"
        } else {
            "initContainers"
        };
        let c = container(ds, list, name);
        let value = env_entries(c)
            .into_iter()
            .find(|(n, _)| n == variable)
            .and_then(|(_, v)| v)
            .unwrap_or_else(|| panic!("{name} does not set {variable}"));
        let host = host_path(ds, c, &value);
        assert_eq!(
            host.as_deref(),
            Some(Path::new(want)),
            "{name}: {variable}={value}"
        );
    }
    // The socket is where the plugin looks when the conflist names none.
    let socket =
        effective_env(ipamd_container(&objects), &objects, "")["IPAMD_SOCKET_PATH"].clone();
    assert_eq!(socket, vpc_cni_proto::DEFAULT_SOCKET);

    // The plugin runs on the host: its log directory must be one the DaemonSet creates there.
    let env = effective_env(ipamd_container(&objects), &objects, "");
    let log_dir = Path::new(&env[install::PLUGIN_LOG_FILE])
        .parent()
        .unwrap()
        .to_path_buf();
    let volumes = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["hostPath"]["path"] == log_dir.display().to_string()
                && v["hostPath"]["type"] == "DirectoryOrCreate"),
        "no hostPath volume creates {}",
        log_dir.display()
    );
}

#[test]
fn daemonset_runs_everywhere_with_least_privilege() {
    let objects = all_objects();
    let ds = daemonset(&objects);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], "vpc-cni");
    let tolerations = pod["tolerations"].as_array().expect("tolerations");
    assert!(
        tolerations.iter().any(|t| t["operator"] == "Exists"
            && t.get("key").is_none()
            && t.get("effect").is_none()),
        "does not tolerate every taint: {tolerations:?}"
    );
    let os = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchExpressions"];
    assert!(
        os.as_array()
            .unwrap()
            .iter()
            .any(|m| m["key"] == "kubernetes.io/os"
                && m["operator"] == "In"
                && m["values"] == serde_json::json!(["linux"])),
        "not limited to Linux nodes: {os}"
    );
    let rolling = &ds["spec"]["updateStrategy"];
    assert_eq!(rolling["type"], "RollingUpdate");
    assert_eq!(rolling["rollingUpdate"]["maxUnavailable"], "10%");

    let ipamd = ipamd_container(&objects);
    let security = &ipamd["securityContext"];
    assert_ne!(security["privileged"], true, "ipamd must not be privileged");
    assert_eq!(
        security["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    for c in [ipamd, init_container(&objects)] {
        assert_eq!(
            c["resources"]["requests"],
            serde_json::json!({"cpu": "25m", "memory": "64Mi"})
        );
    }
}

/// A finished (or killed) command.
struct Run {
    code: Option<i32>,
    elapsed: Duration,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self
            .code
            .map_or("killed".to_string(), |c| format!("exit {c}"));
        write!(
            f,
            "{code} after {:?}, stderr: {}",
            self.elapsed,
            self.stderr.trim()
        )
    }
}

/// Runs `argv` in `netns` with exactly `env` and PATH; kills it (our own child, by PID) once
/// `limit` has passed, which leaves `code` None.
fn run_bounded(
    netns: &str,
    argv: &[String],
    env: &BTreeMap<String, String>,
    limit: Duration,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let err_path = dir.path().join("stderr");
    let started = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("start {argv:?}: {e}"));
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status.code().unwrap_or(-1));
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code,
        elapsed: started.elapsed(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// The DaemonSet's command with the image's `ipamd` replaced by the built one.
fn local_argv(command: &Value) -> Vec<String> {
    let argv: Vec<String> = command
        .as_array()
        .unwrap_or_else(|| panic!("not a command: {command}"))
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(argv[0], "ipamd", "the image runs everything through ipamd");
    std::iter::once(harness::bins::path("ipamd").display().to_string())
        .chain(argv[1..].iter().cloned())
        .collect()
}

/// An environment that keeps a stray daemon harmless: every path in `dir`, every endpoint on
/// a closed loopback port of the namespace it runs in, no listeners.
fn inert_env(dir: &Path) -> BTreeMap<String, String> {
    let path = |name: &str| dir.join(name).display().to_string();
    [
        ("IPAMD_SOCKET_PATH", path("ipamd.sock")),
        ("AWS_VPC_K8S_CNI_BACKING_STORE", path("ipam.json")),
        ("AWS_VPC_K8S_CNI_LOG_FILE", path("ipamd.log")),
        (
            "AWS_EC2_METADATA_SERVICE_ENDPOINT",
            "http://127.0.0.1:9".into(),
        ),
        ("AWS_EC2_ENDPOINT", "http://127.0.0.1:9".into()),
        ("DISABLE_INTROSPECTION", "true".into()),
        ("DISABLE_METRICS", "true".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

#[test]
fn every_command_the_daemonset_runs_exists() {
    require_root();
    let objects = all_objects();
    let ipamd = ipamd_container(&objects);
    let mut commands = vec![init_container(&objects)["command"].clone()];
    for probe in ["readinessProbe", "livenessProbe"] {
        commands.push(ipamd[probe]["exec"]["command"].clone());
    }
    let ns = Netns::new("help").unwrap();
    let dir = tempfile::tempdir().unwrap();
    for command in commands {
        let mut argv = local_argv(&command);
        argv.push("--help".into());
        let run = run_bounded(
            &ns.name,
            &argv,
            &inert_env(dir.path()),
            Duration::from_secs(10),
        );
        assert_eq!(run.code, Some(0), "{command} --help: {run:?}");
    }
}

fn sysctl(netns: &Netns, name: &str) -> String {
    netns
        .exec_ok(&["cat", &format!("/proc/sys/net/ipv4/{name}")])
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn init_command_installs_the_plugin_and_sets_node_sysctls() {
    require_root();
    let objects = all_objects();
    let ds = daemonset(&objects);
    let init = init_container(&objects);
    let argv = local_argv(&init["command"]);

    // A node namespace whose default route leaves by eth0, as an EC2 node's primary ENI.
    let node = Netns::new("init").unwrap();
    for cmd in [
        "ip link add eth0 type veth peer name uplink",
        "ip addr add 192.0.2.10/24 dev eth0",
        "ip link set eth0 up",
        "ip link set uplink up",
        "ip route add default via 192.0.2.1 dev eth0",
    ] {
        node.exec_ok(&cmd.split(' ').collect::<Vec<_>>()).unwrap();
    }
    let host = tempfile::tempdir().unwrap();
    let plugin = harness::bins::path("vpc-cni");

    for (disable, demux) in [("false", "1"), ("true", "0")] {
        let mut env = effective_env(init, &objects, "node-a");
        // The kubelet's mounts, with a temporary directory standing for the host's root.
        for value in env.values_mut() {
            if let Some(on_host) = host_path(ds, init, value) {
                let stand_in = host.path().join(on_host.strip_prefix("/").unwrap());
                std::fs::create_dir_all(&stand_in).unwrap();
                *value = stand_in.display().to_string();
            }
        }
        env.insert(install::DISABLE_TCP_EARLY_DEMUX.into(), disable.into());
        env.insert(install::PLUGIN_BINARY.into(), plugin.display().to_string());
        let run = run_bounded(&node.name, &argv, &env, Duration::from_secs(30));
        assert_eq!(run.code, Some(0), "ipamd init: {run:?}");

        let installed = host.path().join("opt/cni/bin/vpc-cni");
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(&plugin).unwrap()
        );
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&installed.metadata().unwrap().permissions());
        assert_eq!(mode & 0o777, 0o755, "installed plugin mode");
        assert_eq!(
            sysctl(&node, "tcp_early_demux"),
            demux,
            "DISABLE_TCP_EARLY_DEMUX={disable}"
        );
        assert_eq!(
            sysctl(&node, "conf/eth0/rp_filter"),
            "2",
            "rp_filter on the primary interface"
        );
    }
}

#[test]
fn probe_command_follows_ipamd_health() {
    require_root();
    let objects = all_objects();
    let ipamd = ipamd_container(&objects);
    let mut node = Node::start(&[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut env = effective_env(ipamd, &objects, "node-a");
    env.extend(inert_env(dir.path()));
    env.insert(
        "IPAMD_SOCKET_PATH".into(),
        node.ipamd.socket.display().to_string(),
    );

    let probes: Vec<(&str, &Value)> = ["readinessProbe", "livenessProbe"]
        .into_iter()
        .map(|p| (p, &ipamd[p]))
        .collect();
    for serving in [true, false] {
        if !serving {
            node.ipamd.stop();
        }
        for (which, probe) in &probes {
            let limit =
                Duration::from_secs(probe["timeoutSeconds"].as_u64().expect("timeoutSeconds"));
            let argv = local_argv(&probe["exec"]["command"]);
            let run = run_bounded(node.netns(), &argv, &env, limit);
            assert!(
                run.code.is_some(),
                "{which} outlived its timeoutSeconds: {run:?}"
            );
            assert_eq!(
                run.code == Some(0),
                serving,
                "{which} with ipamd serving={serving}: {run:?}"
            );
            assert!(run.elapsed < limit);
        }
    }
}
