//! A running local VPC: the `vpc-sim` process and what it reports in sim.json.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use serde_json::Value;

use crate::bins;
use crate::process::{wait_for, Guard};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimInfo {
    pub ec2_endpoint: String,
    pub fabric_netns: String,
    pub instances: Vec<Instance>,
    /// Hosts beyond the VPC, reached without address translation, when the scenario has any.
    #[serde(default)]
    pub outside: Option<Outside>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outside {
    pub netns: String,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub id: String,
    #[serde(rename = "type")]
    pub instance_type: String,
    pub role: String,
    pub netns: String,
    pub imds_endpoint: String,
    pub ec2_endpoint: String,
    pub primary_ip: String,
    pub primary_mac: String,
    pub subnet_id: String,
    pub subnet_cidr: String,
}

pub struct Vpc {
    pub info: SimInfo,
    pub run_dir: tempfile::TempDir,
    proc: Guard,
}

impl Vpc {
    /// Starts vpc-sim on a scenario given as JSON and waits until its namespaces are up.
    pub fn start(scenario: &Value) -> anyhow::Result<Self> {
        let run_dir = tempfile::Builder::new().prefix("vpc-sim").tempdir()?;
        let scenario_path = run_dir.path().join("scenario.json");
        std::fs::write(&scenario_path, serde_json::to_vec_pretty(scenario)?)?;
        Self::start_file(&scenario_path, run_dir)
    }

    pub fn start_file(scenario: &Path, run_dir: tempfile::TempDir) -> anyhow::Result<Self> {
        let prefix = format!("vs{}x{}", std::process::id(), rand::random::<u16>());
        let log = std::fs::File::create(run_dir.path().join("vpc-sim.log"))?;
        let mut proc = Guard::spawn(
            "vpc-sim",
            Command::new(bins::path("vpc-sim"))
                .arg("--scenario")
                .arg(scenario)
                .arg("--run-dir")
                .arg(run_dir.path())
                .arg("--netns-prefix")
                .arg(&prefix)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log),
        )?;
        let sim_json = run_dir.path().join("sim.json");
        let info = wait_for("vpc-sim to become ready", Duration::from_secs(60), || {
            if proc.check_running().is_err() {
                return Some(None);
            }
            let text = std::fs::read(&sim_json).ok()?;
            Some(serde_json::from_slice::<SimInfo>(&text).ok())
        })?;
        let info = match info {
            Some(i) => i,
            None => {
                let log =
                    std::fs::read_to_string(run_dir.path().join("vpc-sim.log")).unwrap_or_default();
                anyhow::bail!("vpc-sim failed to start:\n{log}");
            }
        };
        Ok(Self {
            info,
            run_dir,
            proc,
        })
    }

    pub fn instance(&self, id: &str) -> &Instance {
        self.info
            .instances
            .iter()
            .find(|i| i.id == id)
            .unwrap_or_else(|| panic!("scenario has no instance {id}"))
    }

    /// The first instance whose role is "node".
    pub fn node(&self) -> &Instance {
        self.info
            .instances
            .iter()
            .find(|i| i.role == "node")
            .expect("scenario has a node")
    }

    pub fn dir(&self) -> PathBuf {
        self.run_dir.path().to_path_buf()
    }

    fn control(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        http_json(&self.info.ec2_endpoint, method, path, body)
    }

    /// EC2 actions served so far, by name.
    pub fn calls(&self) -> anyhow::Result<Value> {
        self.control("GET", "/sim/calls", None)
    }

    pub fn reset_calls(&self) -> anyhow::Result<()> {
        self.control("POST", "/sim/calls/reset", None).map(|_| ())
    }

    pub fn inject_fault(&self, fault: &Value) -> anyhow::Result<()> {
        self.control("POST", "/sim/faults", Some(fault)).map(|_| ())
    }

    pub fn state(&self) -> anyhow::Result<Value> {
        self.control("GET", "/sim/state", None)
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        let status = self.proc.stop(Duration::from_secs(20));
        match status {
            Some(s) if s.success() => Ok(()),
            other => anyhow::bail!("vpc-sim did not stop cleanly: {other:?}"),
        }
    }
}

/// A tiny HTTP/1.1 client for loopback JSON endpoints, enough for the simulator's control API
/// and ipamd's introspection.
pub fn http_json(
    base: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    use std::io::{Read, Write};
    let addr = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut stream =
        std::net::TcpStream::connect(&addr).with_context(|| format!("connect {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{payload}",
        payload.len()
    )?;
    let mut resp = String::new();
    stream.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if !status.starts_with('2') {
        anyhow::bail!("{method} {path}: HTTP {status}: {body}");
    }
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    if body.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&body).with_context(|| format!("parse {path} answer"))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// `http_json` from inside a network namespace: a short-lived thread enters it, so the socket is
/// opened there (loopback inside a namespace is that namespace's own).
pub fn http_json_in(
    netns: &str,
    base: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let (netns, base, method, path) = (
        netns.to_string(),
        base.to_string(),
        method.to_string(),
        path.to_string(),
    );
    let body = body.cloned();
    std::thread::spawn(move || {
        crate::netns::enter(&netns)?;
        http_json(&base, &method, &path, body.as_ref())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("http thread panicked"))?
}

impl Vpc {
    /// Ids of the ENIs EC2 has attached to `instance`.
    pub fn attached_eni_ids(&self, instance: &str) -> anyhow::Result<Vec<String>> {
        let state = self.state()?;
        let mut ids: Vec<String> = state["enis"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|e| e["attachment"]["instanceId"].as_str() == Some(instance))
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        Ok(ids)
    }
}
