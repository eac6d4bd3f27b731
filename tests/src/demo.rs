//! The node scenario `make demo` shows and the end-to-end suite asserts: ten pods on one node
//! of the local VPC, created and deleted the way containerd does it for the kubelet.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::ipamd::Ipamd;
use crate::netns::{ip_json, ping, tcp_reaches, Netns, TcpService};
use crate::node::{host_veth, result_ip};
use crate::plugin::{self, Pod};
use crate::vpc::Vpc;

/// Port of the database in conf/examples/vpc-demo.json.
pub const DB_PORT: u16 = 5432;

/// One pod as the node sees it after ADD.
#[derive(Debug, Clone)]
pub struct PodRow {
    pub name: String,
    pub ip: String,
    pub eni: String,
    pub host_veth: String,
    pub table: String,
}

/// Everything the scenario observed; `failures` is empty when the node did its job.
#[derive(Debug, Default)]
pub struct Report {
    pub pods: Vec<PodRow>,
    pub checks: Vec<(String, bool)>,
    pub failures: Vec<String>,
}

impl Report {
    fn check(&mut self, what: impl Into<String>, ok: bool) {
        let what = what.into();
        if !ok {
            self.failures.push(what.clone());
        }
        self.checks.push((what, ok));
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<8} {:<14} {:<23} {:<16} TABLE",
            "POD", "ADDRESS", "ENI", "HOST VETH"
        );
        for p in &self.pods {
            let _ = writeln!(
                s,
                "{:<8} {:<14} {:<23} {:<16} {}",
                p.name, p.ip, p.eni, p.host_veth, p.table
            );
        }
        s
    }
}

pub fn demo_scenario() -> anyhow::Result<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../conf/examples/vpc-demo.json"
    );
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    Ok(serde_json::from_str(&text)?)
}

/// The plugin's netconf from conf/, pointed at this node's ipamd and log file.
pub fn node_netconf(ipamd: &Ipamd, dir: &Path) -> Value {
    plugin::netconf_from_conflist(
        &plugin::repo_conflist(),
        &json!({
            "ipamdSocket": ipamd.socket.display().to_string(),
            "pluginLogFile": dir.join("plugin.log").display().to_string(),
        }),
    )
}

/// Runs the whole node scenario: start ipamd, ADD `count` pods, prove reachability, DEL them
/// and prove nothing is left on the node.
pub fn run_node(vpc: &Vpc, count: usize) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let node = vpc.node().clone();
    let dir = vpc.dir();
    let mut ipamd = Ipamd::start(&node, Ipamd::env_for(&node, &dir, &[]))?;
    let conf = node_netconf(&ipamd, &dir);

    let pods = add_pods(&node.netns, &conf, &ipamd, count)?;
    report.pods = pod_rows(&pods, &ipamd);
    check_addresses(&mut report, vpc);
    check_reachability(&mut report, vpc, &pods);

    // DEL, then remove the namespace, in the order a runtime tears a sandbox down.
    for (ns, pod, result) in pods {
        let prev = plugin::with_prev_result(&conf, &result);
        let del = plugin::run(&node.netns, "DEL", &pod, &prev)?;
        report.check(format!("DEL {} succeeds", pod.name), del.ok());
        drop(ns);
    }
    check_node_clean(&mut report, &node.netns, &ipamd)?;
    ipamd.stop();
    Ok(report)
}

/// ADDs `count` pods, each in a namespace of its own; any failure ends the scenario.
fn add_pods(
    node_ns: &str,
    conf: &Value,
    ipamd: &Ipamd,
    count: usize,
) -> anyhow::Result<Vec<(Netns, Pod, Value)>> {
    let mut pods = Vec::new();
    for i in 0..count {
        let ns = Netns::new(&format!("pod{i}"))?;
        let pod = Pod::new(
            "default",
            &format!("pod-{i}"),
            &format!("ctr{i:04}"),
            &ns.path(),
        );
        let out = plugin::run(node_ns, "ADD", &pod, conf)?;
        if !out.ok() {
            bail!(
                "ADD {} failed ({}): {}\nipamd log:\n{}",
                pod.name,
                out.code,
                out.stdout,
                ipamd.log_tail(40)
            );
        }
        pods.push((ns, pod, out.json()));
    }
    Ok(pods)
}

/// The table rows: each pod's address, the ENI ipamd says holds it, host veth and table.
fn pod_rows(pods: &[(Netns, Pod, Value)], ipamd: &Ipamd) -> Vec<PodRow> {
    let owners = crate::introspect::ip_owners(&ipamd.enis().unwrap_or(Value::Null));
    pods.iter()
        .map(|(_, pod, result)| {
            let ip = result_ip(result);
            let eni = owners
                .iter()
                .find(|(a, _)| *a == ip)
                .map_or_else(|| "?".into(), |(_, e)| e.clone());
            PodRow {
                name: pod.name.clone(),
                eni,
                host_veth: host_veth(result),
                table: table_of(result),
                ip,
            }
        })
        .collect()
}

fn table_of(result: &Value) -> String {
    let device: i64 = result["interfaces"][2]["sandbox"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(-1);
    match device {
        0 => "main".into(),
        d if d > 0 => (d + 1).to_string(),
        _ => "?".into(),
    }
}

fn check_addresses(report: &mut Report, vpc: &Vpc) {
    let ips: Vec<&String> = report.pods.iter().map(|p| &p.ip).collect();
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    report.check(
        "every pod has a distinct address",
        unique.len() == ips.len(),
    );
    let vpc_cidr: ipnet::Ipv4Net = vpc.node().subnet_cidr.parse().expect("subnet cidr");
    let all_in = report.pods.iter().all(|p| {
        p.ip.parse::<std::net::Ipv4Addr>()
            .map(|a| vpc_cidr.contains(&a))
            .unwrap_or(false)
    });
    report.check(
        format!("every address is in the node's subnet {vpc_cidr}"),
        all_in,
    );
    let owned = report.pods.iter().all(|p| p.eni.starts_with("eni-"));
    report.check("every address is held by one of the node's ENIs", owned);
}

fn check_reachability(report: &mut Report, vpc: &Vpc, pods: &[(Netns, Pod, Value)]) {
    let rows = report.pods.clone();
    let first = &pods[0].0.name;
    for row in rows.iter().skip(1) {
        report.check(
            format!("{} reaches {} ({})", rows[0].name, row.name, row.ip),
            ping(first, &row.ip),
        );
    }
    let hosts: Vec<_> = vpc
        .info
        .instances
        .iter()
        .filter(|i| i.role == "host")
        .cloned()
        .collect();
    for host in hosts {
        // The scenario's VPC host is a database whose security group admits TCP on its port
        // from the node's group, and nothing else.
        let Ok(_db) = TcpService::start(&host.netns, DB_PORT) else {
            report.check(
                format!("database listens on {}:{DB_PORT}", host.primary_ip),
                false,
            );
            continue;
        };
        for ((ns, _, _), row) in pods.iter().zip(&rows) {
            let ok = tcp_reaches(&ns.name, &host.primary_ip, DB_PORT);
            report.check(
                format!(
                    "{} reaches VPC database {} ({}:{DB_PORT})",
                    row.name, host.id, host.primary_ip
                ),
                ok,
            );
        }
    }
}

/// After every DEL: no pod veth, no pod route or rule on the node, nothing assigned in ipamd.
fn check_node_clean(report: &mut Report, node: &str, ipamd: &Ipamd) -> anyhow::Result<()> {
    let links = ip_json(node, &["link", "show"])?;
    let veths: Vec<String> = links
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| n.starts_with("eni"))
        .map(str::to_string)
        .collect();
    report.check(
        format!("no pod veth left on the node {veths:?}"),
        veths.is_empty(),
    );
    let rules = ip_json(node, &["rule", "show"])?;
    let pod_rules: Vec<&Value> = rules
        .iter()
        .filter(|r| matches!(r["priority"].as_i64(), Some(512) | Some(1536)))
        .collect();
    report.check(
        format!("no pod rule left on the node ({})", pod_rules.len()),
        pod_rules.is_empty(),
    );
    let routes = ip_json(node, &["route", "show", "table", "main"])?;
    let pod_routes = routes
        .iter()
        .filter(|r| {
            r["dev"]
                .as_str()
                .map(|d| d.starts_with("eni"))
                .unwrap_or(false)
        })
        .count();
    report.check("no pod route left in main", pod_routes == 0);
    let assigned = ipamd.assigned_ips()?;
    report.check(
        format!("ipamd holds no assignment {assigned:?}"),
        assigned.is_empty(),
    );
    Ok(())
}
