//! ipamd running in a simulated node's namespace, as the DaemonSet runs it on a node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::bins;
use crate::process::{wait_for, Guard};
use crate::vpc::{http_json_in, Instance};

pub struct Ipamd {
    pub netns: String,
    pub socket: PathBuf,
    pub checkpoint: PathBuf,
    pub log: PathBuf,
    pub env: BTreeMap<String, String>,
    proc: Option<Guard>,
}

impl Ipamd {
    /// Environment for a node of the simulated VPC; `extra` overrides or adds variables.
    pub fn env_for(
        node: &Instance,
        dir: &Path,
        extra: &[(&str, &str)],
    ) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = [
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                node.imds_endpoint.as_str(),
            ),
            ("AWS_EC2_ENDPOINT", node.ec2_endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "AKIDLOCALVPC"),
            ("AWS_SECRET_ACCESS_KEY", "local-vpc-secret"),
            ("AWS_VPC_K8S_CNI_LOGLEVEL", "debug"),
            ("IP_COOLDOWN_PERIOD", "0"),
            ("VPC_CNI_POOL_INTERVAL_MS", "500"),
            ("VPC_CNI_ENI_MIN_AGE_SECONDS", "2"),
            ("CLUSTER_NAME", "local"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        env.insert("IPAMD_SOCKET_PATH".into(), path("run/ipamd.sock"));
        env.insert(
            "AWS_VPC_K8S_CNI_BACKING_STORE".into(),
            path("run/ipam.json"),
        );
        env.insert("AWS_VPC_K8S_CNI_LOG_FILE".into(), path("ipamd.log"));
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        env
    }

    /// Starts ipamd in `node`'s namespace and waits until it reports SERVING.
    pub fn start(node: &Instance, env: BTreeMap<String, String>) -> anyhow::Result<Self> {
        let socket = PathBuf::from(&env["IPAMD_SOCKET_PATH"]);
        let checkpoint = PathBuf::from(&env["AWS_VPC_K8S_CNI_BACKING_STORE"]);
        let log = PathBuf::from(&env["AWS_VPC_K8S_CNI_LOG_FILE"]);
        let mut me = Self {
            netns: node.netns.clone(),
            socket,
            checkpoint,
            log,
            env,
            proc: None,
        };
        me.restart()?;
        Ok(me)
    }

    /// (Re)starts the process with the same environment and state files.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(bins::path("ipamd"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut proc = Guard::spawn("ipamd", &mut cmd)?;
        let ready = wait_for("ipamd to serve", Duration::from_secs(60), || {
            if proc.check_running().is_err() {
                return Some(false);
            }
            self.healthy().then_some(true)
        })
        .map_err(|e| anyhow::anyhow!("{e}; log:\n{}", self.log_tail(60)))?;
        if !ready {
            anyhow::bail!("ipamd exited during start-up; log:\n{}", self.log_tail(60));
        }
        self.proc = Some(proc);
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Kills ipamd with SIGKILL, as a crash or an OOM kill would.
    pub fn crash(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.crash();
        }
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// Whether the gRPC health service answers SERVING on the socket.
    pub fn healthy(&self) -> bool {
        crate::rpc::health_serving(&self.socket)
    }

    pub fn enis(&self) -> anyhow::Result<Value> {
        http_json_in(
            &self.netns,
            "http://127.0.0.1:61679",
            "GET",
            "/v1/enis",
            None,
        )
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Ipamd {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Ipamd {
    /// Addresses ipamd holds for pods, from its introspection.
    pub fn assigned_ips(&self) -> anyhow::Result<Vec<String>> {
        let enis = self.enis()?;
        let mut out = Vec::new();
        crate::introspect::visit_addresses(&enis, &mut |addr, assigned| {
            if assigned {
                out.push(addr.to_string());
            }
        });
        out.sort();
        Ok(out)
    }

    /// ENI ids ipamd manages, from its introspection.
    pub fn eni_ids(&self) -> anyhow::Result<Vec<String>> {
        let mut ids = crate::introspect::eni_ids(&self.enis()?);
        ids.sort();
        Ok(ids)
    }
}
