//! The database scenario of security groups for pods, end to end on one node: a database in
//! the VPC whose group admits TCP 3306 only from `sg-catalog`; a pod labelled app=catalog,
//! matched by a SecurityGroupPolicy naming that group, connects through its branch ENI; a pod
//! without the label is refused. Runs in strict and in standard mode, and checks that DEL
//! leaves no VLAN link, rule or route table behind.
//!
//! Around it, what differs between the modes on the wire: the source address of each pod's
//! traffic out of the VPC (strict never translates a branch pod's address; standard gives it
//! the node's address like any pod), kubelet-like probes from the node to the branch pod with
//! TCP early demux off, and link-local traffic between the pod and the node (only standard
//! mode carries it; strict mode sends everything through the branch ENI, where link-local
//! addresses do not route).
//!
//! It needs 802.1Q, so it runs inside a User-mode Linux guest (tests/tests/sgp_database_uml.rs
//! boots it there) with etcd and kube-apiserver in the same guest.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use serde_json::{json, Value};

use crate::kube::ApiServer;
use crate::netns::{exec_in_ok, ip_json, tcp_reaches, tcp_source, TcpService};
use crate::node::{result_ip, Node, PodNs};
use crate::plugin::{self, Pod as CniPod};
use crate::probe::{probe_many, reaches_from};
use crate::process::wait_for;

pub const NAMESPACE: &str = "shop";
pub const NODE_NAME: &str = "node-1";
const DB_PORT: u16 = 3306;
/// Where the catalog pod answers the kubelet's probes.
const PROBE_PORT: u16 = 8080;
/// How many probe connections the node opens to the branch pod in a row.
const PROBES: usize = 2000;
const OUTSIDE_PORT: u16 = 443;
/// A node-local agent on a link-local address, as EKS Pod Identity's is.
const AGENT: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 23);
const AGENT_PORT: u16 = 80;
/// A link-local source on the node, as a mesh's probe rewriting uses.
const LINK_LOCAL_SOURCE: Ipv4Addr = Ipv4Addr::new(169, 254, 7, 1);

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// One line per check; the run fails if any check failed.
#[derive(Default)]
pub struct Checks {
    pub failed: Vec<String>,
}

impl Checks {
    pub fn check(&mut self, what: impl Into<String>, ok: bool) {
        let what = what.into();
        println!("{} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            self.failed.push(what);
        }
    }
}

/// Creates the Kubernetes side: the namespace, the CRD, the example policy, the node object.
pub async fn kube_objects(api: &ApiServer) -> anyhow::Result<kube::Client> {
    let client = api.client().await?;
    api.ensure_namespace(&client, NAMESPACE).await?;
    api.install_crd(&client, &repo("conf/crds/securitygrouppolicies.yaml"))
        .await?;
    let text = std::fs::read_to_string(repo("conf/examples/sgp-catalog.yaml"))?;
    let policy: DynamicObject = serde_saphyr::from_str(&text).context("parse sgp-catalog.yaml")?;
    let gvk = GroupVersionKind::gvk("vpcresources.k8s.aws", "v1beta1", "SecurityGroupPolicy");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "securitygrouppolicies");
    let policies: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &ar);
    policies
        .create(&PostParams::default(), &policy)
        .await
        .context("create policy")?;
    let node: KubeNode = serde_json::from_value(json!({
        "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/os": "linux"}},
    }))?;
    Api::<KubeNode>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await?;
    Ok(client)
}

/// A pod scheduled to the node; `catalog` pods carry the label the policy selects and the
/// branch resource the admission webhook would have added.
pub async fn create_pod(client: &kube::Client, name: &str, catalog: bool) -> anyhow::Result<Pod> {
    let mut container = json!({"name": "app", "image": "registry.k8s.io/pause:3.9"});
    let mut labels = json!({});
    if catalog {
        labels = json!({"app": "catalog"});
        container["resources"] = json!({
            "limits": {"vpc.amazonaws.com/pod-eni": "1"},
            "requests": {"vpc.amazonaws.com/pod-eni": "1"},
        });
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {"nodeName": NODE_NAME, "automountServiceAccountToken": false,
                 "containers": [container]},
    }))?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    Ok(pods.create(&PostParams::default(), &pod).await?)
}

/// The plugin's netconf for `mode`.
fn netconf(node: &Node, mode: &str) -> Value {
    let mut conf = node.conf.clone();
    conf["podSGEnforcingMode"] = json!(mode);
    conf
}

fn cni_pod(pod: &Pod, netns_path: &str, container_id: &str) -> CniPod {
    let meta = &pod.metadata;
    let mut p = CniPod::new(
        NAMESPACE,
        meta.name.as_deref().unwrap_or(""),
        container_id,
        netns_path,
    );
    p.uid = meta.uid.clone().unwrap_or_default();
    p
}

/// One round of the scenario in `mode` on a node that runs ipamd with that mode.
pub async fn round(
    node: &Node,
    client: &kube::Client,
    mode: &str,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let db = node
        .vpc
        .info
        .instances
        .iter()
        .find(|i| i.role == "host")
        .context("no db")?;
    let _db = TcpService::start(&db.netns, DB_PORT)?;
    let conf = netconf(node, mode);

    let catalog = create_pod(client, &format!("catalog-{mode}"), true).await?;
    let web = create_pod(client, &format!("web-{mode}"), false).await?;
    let catalog_ns = node.pod(&format!("cat-{mode}"), "x")?;
    let web_ns = node.pod(&format!("web-{mode}"), "x")?;
    let catalog_pod = cni_pod(
        &catalog,
        &catalog_ns.ns.path(),
        &format!("c-catalog-{mode}"),
    );
    let web_pod = cni_pod(&web, &web_ns.ns.path(), &format!("c-web-{mode}"));

    let added = add_with_warm_branch(node, &catalog_pod, &conf, mode, checks)?;
    let web_added = plugin::run(node.netns(), "ADD", &web_pod, &conf)?;
    if !web_added.ok() {
        bail!("ADD of the web pod failed: {}", web_added.stdout);
    }
    let vlan = branch_wiring(node, client, &catalog, &added, mode, checks).await?;
    let pods = Pods {
        catalog: &catalog_ns,
        catalog_ip: result_ip(&added).parse()?,
        web: &web_ns,
    };
    on_the_wire(node, mode, &pods, db.primary_ip.parse()?, checks)?;

    for (pod, result) in [(&catalog_pod, &added), (&web_pod, &web_added.json())] {
        let out = node.cni_prev("DEL", pod, result)?;
        checks.check(format!("{mode}: DEL {} succeeds", pod.name), out.ok());
    }
    drop((catalog_ns, web_ns));
    nothing_left(node, mode, vlan, checks)
}

/// The catalog pod's branch: its VLAN id from the result, the annotation, the host side.
/// Returns the VLAN id.
async fn branch_wiring(
    node: &Node,
    client: &kube::Client,
    catalog: &Pod,
    added: &Value,
    mode: &str,
    checks: &mut Checks,
) -> anyhow::Result<u32> {
    let vlan: u32 = added["interfaces"][2]["mac"]
        .as_str()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    checks.check(
        format!("{mode}: the catalog pod got a branch ENI (VLAN {vlan})"),
        vlan > 0,
    );
    let annotation = pod_eni_annotation(client, catalog).await?;
    checks.check(
        format!("{mode}: the pod carries the pod-eni annotation"),
        annotation.contains(&result_ip(added)),
    );
    host_state(node, mode, vlan, checks)?;
    Ok(vlan)
}

/// Traffic: the database admits the catalog pod only; then source addresses, probes and
/// link-local traffic as each mode carries them.
fn on_the_wire(
    node: &Node,
    mode: &str,
    pods: &Pods,
    db: Ipv4Addr,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let ok = tcp_reaches(&pods.catalog.ns.name, &db.to_string(), DB_PORT);
    checks.check(
        format!("{mode}: catalog pod reaches the database on {DB_PORT}"),
        ok,
    );
    let refused = !tcp_reaches(&pods.web.ns.name, &db.to_string(), DB_PORT);
    checks.check(
        format!("{mode}: pod without the label is refused by the database"),
        refused,
    );
    let _probed = TcpService::start(&pods.catalog.ns.name, PROBE_PORT)?;
    source_addresses(node, mode, pods, db, checks)?;
    probes(node, mode, pods, checks)?;
    link_local(node, mode, pods, checks)
}

/// The round's two pods: the catalog pod on its branch ENI and the web pod on the node's.
struct Pods<'a> {
    catalog: &'a PodNs,
    catalog_ip: Ipv4Addr,
    web: &'a PodNs,
}

/// The node's init container: `ipamd init` with DISABLE_TCP_EARLY_DEMUX=true in the node's
/// namespace. The check reads the sysctl back rather than trusting the variable.
pub fn init_node(node: &Node, mode: &str, checks: &mut Checks) -> anyhow::Result<()> {
    let bin_dir = tempfile::tempdir()?;
    let out = Command::new("ip")
        .args(["netns", "exec", node.netns()])
        .arg(crate::bins::path("ipamd"))
        .arg("init")
        .env("HOST_CNI_BIN_PATH", bin_dir.path())
        .env("VPC_CNI_PLUGIN_BINARY", crate::bins::path("vpc-cni"))
        .env("DISABLE_TCP_EARLY_DEMUX", "true")
        .env("AWS_VPC_K8S_CNI_LOG_FILE", "stderr")
        .output()?;
    if !out.status.success() {
        bail!("ipamd init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let demux = exec_in_ok(node.netns(), &["cat", "/proc/sys/net/ipv4/tcp_early_demux"])?;
    checks.check(
        format!(
            "{mode}: ipamd init turned TCP early demux off ({})",
            demux.trim()
        ),
        demux.trim() == "0",
    );
    Ok(())
}

/// The source address each pod's connections carry on the wire: to the database in the VPC
/// always the pod's own; out of the VPC, a strict-mode branch pod keeps its own (it leaves
/// through its VLAN, which is never translated) and every other pod takes the node's.
fn source_addresses(
    node: &Node,
    mode: &str,
    pods: &Pods,
    db: Ipv4Addr,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let outside = node
        .vpc
        .info
        .outside
        .as_ref()
        .context("the scenario has no outside host")?;
    let host: Ipv4Addr = outside
        .addresses
        .first()
        .context("no outside address")?
        .parse()?;
    let _service = TcpService::start(&outside.netns, OUTSIDE_PORT)?;
    let node_ip: Ipv4Addr = node.instance.primary_ip.parse()?;
    let seen =
        |pod: &PodNs, addr: Ipv4Addr, port: u16| tcp_source(&pod.ns.name, &addr.to_string(), port);
    let catalog_out = if mode == "strict" {
        pods.catalog_ip
    } else {
        node_ip
    };
    let cases = [
        (
            "catalog pod to the database",
            seen(pods.catalog, db, DB_PORT),
            pods.catalog_ip,
        ),
        (
            "catalog pod out of the VPC",
            seen(pods.catalog, host, OUTSIDE_PORT),
            catalog_out,
        ),
        (
            "web pod out of the VPC",
            seen(pods.web, host, OUTSIDE_PORT),
            node_ip,
        ),
    ];
    for (what, got, want) in cases {
        checks.check(
            format!("{mode}: {what} arrives from {want} ({got:?})"),
            got == Some(IpAddr::V4(want)),
        );
    }
    Ok(())
}

/// The kubelet's probes of a strict-mode pod cross the VPC and come back through the branch
/// ENI; with TCP early demux off every one of a long run must be answered.
fn probes(node: &Node, mode: &str, pods: &Pods, checks: &mut Checks) -> anyhow::Result<()> {
    let target = SocketAddr::from((pods.catalog_ip, PROBE_PORT));
    let done = probe_many(node.netns(), target, PROBES, Duration::from_secs(2), 20)?;
    checks.check(
        format!(
            "{mode}: {} of {PROBES} probes from the node to the catalog pod answered",
            done.sent - done.failed
        ),
        done == crate::probe::Probes {
            sent: PROBES,
            failed: 0,
        },
    );
    Ok(())
}

/// Link-local traffic between the branch pod and the node: a node-local agent on
/// 169.254.170.23 and a connection to the pod from 169.254.7.1. Standard mode delivers both
/// on the node. Strict mode sends all of the pod's traffic through its branch ENI into the
/// VPC, where link-local addresses do not route, so both fail (ipamd says so at start-up).
fn link_local(node: &Node, mode: &str, pods: &Pods, checks: &mut Checks) -> anyhow::Result<()> {
    for addr in [AGENT, LINK_LOCAL_SOURCE] {
        exec_in_ok(
            node.netns(),
            &["ip", "addr", "add", &format!("{addr}/32"), "dev", "lo"],
        )?;
    }
    let _agent = TcpService::start(node.netns(), AGENT_PORT)?;
    let want = mode == "standard";
    let to_agent = tcp_reaches(&pods.catalog.ns.name, &AGENT.to_string(), AGENT_PORT);
    let pod = SocketAddrV4::new(pods.catalog_ip, PROBE_PORT);
    let from_link_local =
        reaches_from(node.netns(), LINK_LOCAL_SOURCE, pod, Duration::from_secs(2));
    let verb = if want { "reaches" } else { "cannot reach" };
    checks.check(
        format!("{mode}: the catalog pod {verb} the agent on {AGENT} ({to_agent})"),
        to_agent == want,
    );
    checks.check(
        format!(
            "{mode}: the node from {LINK_LOCAL_SOURCE} {verb} the catalog pod ({from_link_local})"
        ),
        from_link_local == want,
    );
    Ok(())
}

/// ADD of a pod whose policy's group set has a warm branch: it must change nothing in EC2,
/// the point of keeping branches warm.
fn add_with_warm_branch(
    node: &Node,
    pod: &CniPod,
    conf: &Value,
    mode: &str,
    checks: &mut Checks,
) -> anyhow::Result<Value> {
    wait_for("a warm sg-catalog branch", Duration::from_secs(60), || {
        warm_branch_for(node, "sg-catalog").then_some(())
    })?;
    let before = changing_calls(&node.vpc.calls()?);
    // The kubelet retries a sandbox until ipamd has the pod in its cache; so does this.
    let added = wait_for("ADD of the catalog pod", Duration::from_secs(60), || {
        let out = plugin::run(node.netns(), "ADD", pod, conf).ok()?;
        out.ok().then(|| out.json())
    })?;
    let after = changing_calls(&node.vpc.calls()?);
    checks.check(
        format!("{mode}: the catalog pod's ADD changed nothing in EC2 ({before:?} -> {after:?})"),
        before == after,
    );
    Ok(added)
}

/// The pod's `vpc.amazonaws.com/pod-eni` annotation as the API server has it now.
async fn pod_eni_annotation(client: &kube::Client, pod: &Pod) -> anyhow::Result<String> {
    let now = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .get(pod.metadata.name.as_deref().unwrap_or(""))
        .await?;
    Ok(now
        .metadata
        .annotations
        .unwrap_or_default()
        .get("vpc.amazonaws.com/pod-eni")
        .cloned()
        .unwrap_or_default())
}

/// Counts of the EC2 actions that change something (all but Describe*), by action. ipamd's
/// background loops may describe at any time; what matters is that the ADD created,
/// associated or modified nothing.
fn changing_calls(calls: &Value) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = calls
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.starts_with("Describe"))
                .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Whether ipamd's /v1/branches lists a warm branch carrying `group`.
fn warm_branch_for(node: &Node, group: &str) -> bool {
    let doc = crate::vpc::http_json_in(
        node.netns(),
        "http://127.0.0.1:61679",
        "GET",
        "/v1/branches",
        None,
    );
    doc.ok()
        .and_then(|d| d["branches"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .any(|b| {
            b["state"] == "warm"
                && b["securityGroups"]
                    .as_array()
                    .is_some_and(|g| g.iter().any(|x| x == group))
        })
}

/// The host side of a branch pod in each mode, as aws-node lays it out.
fn host_state(node: &Node, mode: &str, vlan: u32, checks: &mut Checks) -> anyhow::Result<()> {
    let link = format!("vlan.eth.{vlan}");
    checks.check(format!("{mode}: {link} exists"), node.has_link(&link));
    let table = (100 + vlan).to_string();
    let routes = ip_json(node.netns(), &["route", "show", "table", &table])?;
    checks.check(
        format!("{mode}: table {table} has the default route via {link}"),
        routes
            .iter()
            .any(|r| r["dst"] == "default" && r["dev"] == link.as_str()),
    );
    let rules = ip_json(node.netns(), &["rule", "show"])?;
    let iif_rules = rules.iter().filter(|r| r["priority"] == 10).count();
    let from_rules = rules
        .iter()
        .filter(|r| r["priority"] == 1536 && r["table"] == table.as_str())
        .count();
    match mode {
        "strict" => checks.check(
            format!("strict: two priority-10 iif rules ({iif_rules})"),
            iif_rules == 2,
        ),
        _ => checks.check(
            format!("standard: a priority-1536 rule to table {table} ({from_rules})"),
            from_rules == 1,
        ),
    }
    Ok(())
}

fn nothing_left(node: &Node, mode: &str, vlan: u32, checks: &mut Checks) -> anyhow::Result<()> {
    let link = format!("vlan.eth.{vlan}");
    checks.check(format!("{mode}: DEL removed {link}"), !node.has_link(&link));
    let rules = ip_json(node.netns(), &["rule", "show"])?;
    let left = rules
        .iter()
        .filter(|r| matches!(r["priority"].as_i64(), Some(10 | 512 | 1536)))
        .count();
    checks.check(format!("{mode}: DEL left no pod rule ({left})"), left == 0);
    let table = (100 + vlan).to_string();
    let routes = ip_json(node.netns(), &["route", "show", "table", &table])?;
    checks.check(
        format!("{mode}: DEL emptied table {table}"),
        routes.is_empty(),
    );
    Ok(())
}
