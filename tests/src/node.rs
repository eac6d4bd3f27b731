//! A simulated node ready for pods: the local VPC, ipamd in the node's namespace, and the
//! plugin's netconf from conf/ pointed at that ipamd.

use serde_json::Value;

use crate::demo::{demo_scenario, node_netconf};
use crate::ipamd::Ipamd;
use crate::kube::ApiServer;
use crate::loopback::Relay;
use crate::netns::{ip_json, Netns};
use crate::plugin::{self, Outcome, Pod};
use crate::vpc::{Instance, Vpc};

pub struct Node {
    pub ipamd: Ipamd,
    /// Carries ipamd's API server traffic when the node was started with one.
    pub kube_relay: Option<Relay>,
    pub conf: Value,
    pub instance: Instance,
    // Dropped last: ipamd must stop before the VPC goes away.
    pub vpc: Vpc,
}

/// A pod namespace with the identity the runtime passes for it.
pub struct PodNs {
    pub ns: Netns,
    pub pod: Pod,
}

impl Node {
    /// The demo VPC with ipamd started with the harness defaults plus `env`.
    pub fn start(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        Self::start_with(&demo_scenario()?, env)
    }

    pub fn start_with(scenario: &Value, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let vpc = Vpc::start(scenario)?;
        let instance = vpc.node().clone();
        let ipamd = Ipamd::start(&instance, Ipamd::env_for(&instance, &vpc.dir(), env))?;
        let conf = node_netconf(&ipamd, &vpc.dir());
        Ok(Self {
            ipamd,
            kube_relay: None,
            conf,
            instance,
            vpc,
        })
    }

    /// As [`Node::start_with`], with ipamd reaching `api` through a relay into the node's
    /// namespace and a kubeconfig of its own (KUBECONFIG); `env` adds ENABLE_POD_ENI and the
    /// rest.
    pub fn start_with_kube(
        scenario: &Value,
        env: &[(&str, &str)],
        api: &ApiServer,
    ) -> anyhow::Result<Self> {
        Self::start_with_kube_prepared(scenario, env, api, |_| Ok(()))
    }

    /// As [`Node::start_with_kube`]; `prepare` runs on the VPC before ipamd starts (to inject
    /// faults, say).
    pub fn start_with_kube_prepared(
        scenario: &Value,
        env: &[(&str, &str)],
        api: &ApiServer,
        prepare: impl FnOnce(&Vpc) -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let vpc = Vpc::start(scenario)?;
        let instance = vpc.node().clone();
        let relay = Relay::start(&instance.netns, api.addr()?)?;
        let kubeconfig = vpc.dir().join("kubeconfig");
        api.kubeconfig_via(&format!("https://127.0.0.1:{}", relay.port), &kubeconfig)?;
        let kubeconfig = kubeconfig.display().to_string();
        let mut all = vec![("KUBECONFIG", kubeconfig.as_str())];
        all.extend_from_slice(env);
        prepare(&vpc)?;
        let ipamd = Ipamd::start(&instance, Ipamd::env_for(&instance, &vpc.dir(), &all))?;
        let conf = node_netconf(&ipamd, &vpc.dir());
        Ok(Self {
            ipamd,
            kube_relay: Some(relay),
            conf,
            instance,
            vpc,
        })
    }

    pub fn netns(&self) -> &str {
        &self.instance.netns
    }

    pub fn pod(&self, name: &str, container_id: &str) -> anyhow::Result<PodNs> {
        let ns = Netns::new(name)?;
        let pod = Pod::new("default", name, container_id, &ns.path());
        Ok(PodNs { ns, pod })
    }

    pub fn cni(&self, command: &str, pod: &Pod) -> anyhow::Result<Outcome> {
        plugin::run(self.netns(), command, pod, &self.conf)
    }

    pub fn cni_prev(&self, command: &str, pod: &Pod, prev: &Value) -> anyhow::Result<Outcome> {
        plugin::run(
            self.netns(),
            command,
            pod,
            &plugin::with_prev_result(&self.conf, prev),
        )
    }

    /// ADD that must succeed; returns the result.
    pub fn add(&self, pod: &Pod) -> Value {
        let out = self.cni("ADD", pod).expect("run plugin");
        assert!(
            out.ok(),
            "ADD {} failed ({}): {}\n{}\nipamd log:\n{}",
            pod.name,
            out.code,
            out.stdout,
            out.stderr,
            self.ipamd.log_tail(30)
        );
        out.json()
    }

    /// Policy rules on the node that mention `ip` (priority 512 and 1536 rules of a pod).
    pub fn rules_for(&self, ip: &str) -> Vec<Value> {
        ip_json(self.netns(), &["rule", "show"])
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["src"].as_str() == Some(ip) || r["dst"].as_str() == Some(ip))
            .collect()
    }

    /// Routes in any table of the node that lead to `ip`.
    pub fn routes_to(&self, ip: &str) -> Vec<Value> {
        ip_json(self.netns(), &["route", "show", "table", "all"])
            .unwrap_or_default()
            .into_iter()
            .filter(|r| r["dst"].as_str() == Some(ip))
            .collect()
    }

    pub fn has_link(&self, name: &str) -> bool {
        ip_json(self.netns(), &["link", "show"])
            .unwrap_or_default()
            .iter()
            .any(|l| l["ifname"].as_str() == Some(name))
    }
}

pub fn result_ip(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string()
}

pub fn host_veth(result: &Value) -> String {
    result["interfaces"][0]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
