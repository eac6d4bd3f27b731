//! Runs the `vpc-cni` binary the way containerd does for the kubelet.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::Context;
use serde_json::{json, Value};

use crate::bins;

/// One pod's identity as the runtime passes it.
#[derive(Debug, Clone)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
}

impl Pod {
    pub fn new(namespace: &str, name: &str, container_id: &str, netns_path: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            container_id: container_id.into(),
            netns: netns_path.into(),
            ifname: "eth0".into(),
        }
    }

    /// CNI_ARGS in the order and form containerd 1.6 sends them.
    pub fn cni_args(&self) -> String {
        format!(
            "K8S_POD_UID={};IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};\
             K8S_POD_INFRA_CONTAINER_ID={}",
            self.uid, self.namespace, self.name, self.container_id
        )
    }
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
    }

    pub fn ok(&self) -> bool {
        self.code == 0
    }

    /// The result's first IPv4 address without its prefix length.
    pub fn ip(&self) -> Option<String> {
        let v = self.json();
        let addr = v["ips"][0]["address"].as_str()?;
        Some(addr.split('/').next()?.to_string())
    }
}

/// The plugin configuration taken from conf/10-vpc-cni.conflist, as a runtime extracts it:
/// the plugin's own object with the list's name and cniVersion.
pub fn netconf_from_conflist(conflist: &Value, overrides: &Value) -> Value {
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    if let Some(map) = overrides.as_object() {
        for (k, v) in map {
            conf[k] = v.clone();
        }
    }
    conf
}

pub fn repo_conflist() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/10-vpc-cni.conflist");
    let text = std::fs::read_to_string(path).expect("read conf/10-vpc-cni.conflist");
    serde_json::from_str(&text).expect("conflist is JSON")
}

/// Runs one CNI verb inside the node namespace `node_netns`.
pub fn run(node_netns: &str, command: &str, pod: &Pod, conf: &Value) -> anyhow::Result<Outcome> {
    run_with_env(node_netns, command, pod, conf, &[])
}

pub fn run_with_env(
    node_netns: &str,
    command: &str,
    pod: &Pod,
    conf: &Value,
    extra_env: &[(&str, &str)],
) -> anyhow::Result<Outcome> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node_netns])
        .arg(bins::path("vpc-cni"))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &pod.container_id)
        .env("CNI_NETNS", &pod.netns)
        .env("CNI_IFNAME", &pod.ifname)
        .env("CNI_ARGS", pod.cni_args())
        .env("CNI_PATH", "/opt/cni/bin:/usr/lib/cni")
        .envs(extra_env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().context("start vpc-cni")?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `conf` with `prevResult` set, as a runtime sends it on DEL and CHECK.
pub fn with_prev_result(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

pub fn empty_object() -> Value {
    json!({})
}

/// The host veth name aws-node gives a pod: prefix + first 11 hex digits of
/// SHA-1("<namespace>.<name>"). Computed here independently of the plugin, to check it.
pub fn host_veth_name(prefix: &str, namespace: &str, name: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::digest(format!("{namespace}.{name}").as_bytes());
    format!("{prefix}{}", &hex::encode(digest)[..11])
}

/// The `CNI_*` variables a runtime sets for `command` on `pod`, with `CNI_PATH` pointing at the
/// reference plugins.
pub fn cni_env(command: &str, pod: &Pod) -> Vec<(String, String)> {
    [
        ("CNI_COMMAND", command.to_string()),
        ("CNI_CONTAINERID", pod.container_id.clone()),
        ("CNI_NETNS", pod.netns.clone()),
        ("CNI_IFNAME", pod.ifname.clone()),
        ("CNI_ARGS", pod.cni_args()),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Runs any CNI plugin binary inside `netns` with exactly `env` (plus PATH, which chained
/// plugins need to find iptables and tc) and `stdin`, as a runtime runs one link of a chain.
pub fn exec(
    netns: &str,
    binary: &std::path::Path,
    env: &[(String, String)],
    stdin: &[u8],
) -> anyhow::Result<Outcome> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(binary)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", binary.display()))?;
    // A plugin that fails before reading its config closes the pipe; its answer still counts.
    match child.stdin.take().expect("stdin").write_all(stdin) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    let out = child.wait_with_output()?;
    Ok(Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
