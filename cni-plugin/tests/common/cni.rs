//! The built `vpc-cni` binary, run as a runtime runs it: `ip netns exec NODE vpc-cni` with
//! CNI_* variables and the config on stdin.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::server::TestIpamd;
use super::TestNetns;

pub const KUBELET_ARGS: &str = "K8S_POD_UID=uid-a;IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;\
                            K8S_POD_NAME=pod-a;K8S_POD_INFRA_CONTAINER_ID=c-aaaa";
/// host_veth_name("eni", "ns1", "pod-a")
pub fn pod_a_veth() -> String {
    vpc_cni::names::host_veth_name("eni", "ns1", "pod-a")
}

pub struct Out {
    pub code: i32,
    pub json: Option<Value>,
    pub stderr: String,
}

/// One plugin run: `ip netns exec NODE vpc-cni` with the given CNI_* variables.
pub fn plugin(node: &TestNetns, vars: &[(&str, &str)], conf: &Value) -> Out {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &node.name, env!("CARGO_BIN_EXE_vpc-cni")])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run vpc-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = match stdout.trim() {
        "" => None,
        text => Some(
            serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {text}")),
        ),
    };
    Out {
        code: out.status.code().unwrap_or(-1),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub struct Pod<'a> {
    pub node: &'a TestNetns,
    pub netns: String,
    pub container_id: String,
    pub args: String,
}

impl Pod<'_> {
    pub fn vars<'b>(&'b self, command: &'b str) -> Vec<(&'b str, &'b str)> {
        vec![
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", &self.container_id),
            ("CNI_NETNS", &self.netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            ("CNI_ARGS", &self.args),
        ]
    }

    pub fn run(&self, command: &str, conf: &Value) -> Out {
        plugin(self.node, &self.vars(command), conf)
    }
}

pub fn conf(version: &str, ipamd: &TestIpamd) -> Value {
    json!({"cniVersion": version, "name": "aws-cni", "type": "vpc-cni", "mtu": "9001",
           "vethPrefix": "eni", "podSGEnforcingMode": "strict",
           "ipamdSocket": ipamd.socket.to_str().unwrap(), "pluginLogLevel": "debug"})
}

pub fn with_prev(mut conf: Value, prev: &Value) -> Value {
    conf["prevResult"] = prev.clone();
    conf
}

pub fn ok(out: &Out) -> &Value {
    assert_eq!(
        out.code, 0,
        "plugin failed: {:?}\nstderr: {}",
        out.json, out.stderr
    );
    out.json.as_ref().expect("a result on stdout")
}

pub fn silent_ok(out: &Out) {
    assert_eq!(
        out.code, 0,
        "plugin failed: {:?}\nstderr: {}",
        out.json, out.stderr
    );
    assert!(out.json.is_none(), "expected no output, got {:?}", out.json);
}

pub fn err_code(out: &Out) -> u64 {
    assert_ne!(out.code, 0, "expected failure, got {:?}", out.json);
    let json = out.json.as_ref().expect("an error object on stdout");
    assert!(json["msg"].is_string(), "{json}");
    assert!(json["cniVersion"].is_string(), "{json}");
    json["code"].as_u64().unwrap()
}
