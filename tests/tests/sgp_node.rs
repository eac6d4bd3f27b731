//! Security groups for pods on a simulated node: ipamd with ENABLE_POD_ENI against a real
//! kube-apiserver and vpc-sim, on the host kernel.
//!
//! The host kernel makes no 802.1Q links, so the plugin cannot wire a branch pod here (the
//! VLAN data path is tested in a User-mode Linux guest); branch ADDs and DELs go to ipamd's
//! socket directly, as the plugin sends them. Regular pods go through the real plugin.
//!
//! Needs root, etcd and the kube-apiserver that tests/kube/build-apiserver.sh builds; fails
//! when any is missing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use harness::kube::ApiServer;
use harness::netns::ip_json;
use harness::node::Node;
use harness::vpc::http_json_in;
use ipamd::sgp::annotation::POD_ENI_ANNOTATION;
use ipamd::sgp::kube::{HAS_TRUNK_LABEL, POD_ENI_RESOURCE};
use ipamd::sgp::policy::SecurityGroupPolicy;
use k8s_openapi::api::core::v1::{Event, Node as K8sNode, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use vpc_cni_proto::{AddNetworkReply, AddNetworkRequest, DelNetworkReply, DelNetworkRequest};

const NODE: &str = "ip-10-0-0-10.us-west-2.compute.internal";
const INSTANCE: &str = "i-0c0ffee0000000001";
const SHOP: &str = "shop";
const COOLDOWN_S: u64 = 4;

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn scenario(instance_type: &str) -> Value {
    let text = std::fs::read_to_string(repo_file("conf/examples/vpc-sgp.json")).unwrap();
    let mut s: Value = serde_json::from_str(&text).unwrap();
    for i in s["instances"].as_array_mut().unwrap() {
        if i["id"] == INSTANCE {
            i["type"] = json!(instance_type);
        }
    }
    s
}

/// Runs blocking harness code (its own runtimes, sleeps) from an async test.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let root = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) == Some("0"));
    assert!(root, "this suite needs root (network namespaces, vpc-sim)");
}

/// The API server with the policy CRD, namespace `shop` with the example policy (app=catalog
/// gets sg-catalog), and this node's Node object.
async fn cluster() -> (ApiServer, Client) {
    require_root();
    let server = ApiServer::start()
        .await
        .unwrap_or_else(|e| panic!("this suite needs a real kube-apiserver: {e:#}"));
    let client = server.client().await.expect("admin client");
    server
        .install_crd(&client, &repo_file("conf/crds/securitygrouppolicies.yaml"))
        .await
        .expect("install the SecurityGroupPolicy crd");
    server.ensure_namespace(&client, SHOP).await.unwrap();
    let text = std::fs::read_to_string(repo_file("conf/examples/sgp-catalog.yaml")).unwrap();
    let policy: SecurityGroupPolicy = serde_saphyr::from_str(&text).unwrap();
    Api::<SecurityGroupPolicy>::namespaced(client.clone(), SHOP)
        .create(&PostParams::default(), &policy)
        .await
        .expect("create the example policy");
    let node: K8sNode = serde_json::from_value(json!({
        "metadata": { "name": NODE, "labels": { "kubernetes.io/os": "linux" } }
    }))
    .unwrap();
    Api::<K8sNode>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("create the node object");
    (server, client)
}

/// A pod bound to this node; `branch` puts the pod-eni limit on its first container, as the
/// controller's webhook does.
async fn create_pod(client: &Client, ns: &str, name: &str, app: &str, branch: bool) -> Pod {
    let limits = if branch {
        json!({ "cpu": "100m", POD_ENI_RESOURCE: "1" })
    } else {
        json!({ "cpu": "100m" })
    };
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "app": app } },
        "spec": {
            "nodeName": NODE,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "app",
                "image": "registry.k8s.io/pause:3.9",
                "resources": { "limits": limits }
            }]
        }
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {ns}/{name}: {e}"))
}

fn start_node(api: &ApiServer, instance_type: &str) -> Node {
    start_node_with_faults(api, instance_type, &[])
}

/// The node with ENABLE_POD_ENI; `faults` are injected into vpc-sim before ipamd starts.
fn start_node_with_faults(api: &ApiServer, instance_type: &str, faults: &[Value]) -> Node {
    start_node_with(api, instance_type, faults, &[])
}

/// As [`start_node_with_faults`], with more environment for ipamd.
fn start_node_with(
    api: &ApiServer,
    instance_type: &str,
    faults: &[Value],
    more_env: &[(&str, &str)],
) -> Node {
    let cooldown = COOLDOWN_S.to_string();
    let mut env = vec![
        ("ENABLE_POD_ENI", "true"),
        ("MY_NODE_NAME", NODE),
        ("POD_SECURITY_GROUP_ENFORCING_MODE", "strict"),
        ("WARM_BRANCH_ENI_TARGET", "1"),
        ("VPC_CNI_BRANCH_COOLDOWN_SECONDS", cooldown.as_str()),
    ];
    env.extend_from_slice(more_env);
    let inject = |vpc: &harness::vpc::Vpc| faults.iter().try_for_each(|f| vpc.inject_fault(f));
    blocking(|| Node::start_with_kube_prepared(&scenario(instance_type), &env, api, inject))
        .unwrap_or_else(|e| panic!("start the node: {e:#}"))
}

fn branches(node: &Node) -> Value {
    blocking(|| {
        http_json_in(
            node.netns(),
            "http://127.0.0.1:61679",
            "GET",
            "/v1/branches",
            None,
        )
    })
    .expect("GET /v1/branches")
}

/// Polls `probe` over /v1/branches until it gives a value; fails after `secs` with the
/// document and ipamd's log.
fn wait_branches<T>(node: &Node, what: &str, secs: u64, probe: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let doc = branches(node);
        if let Some(v) = probe(&doc) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n/v1/branches: {doc:#}\nipamd log:\n{}",
            node.ipamd.log_tail(40)
        );
        blocking(|| std::thread::sleep(Duration::from_millis(200)));
    }
}

fn branch_list(doc: &Value) -> Vec<Value> {
    doc["branches"].as_array().cloned().unwrap_or_default()
}

fn groups_of(b: &Value) -> Vec<String> {
    b["securityGroups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_str().unwrap().to_string())
        .collect()
}

fn warm_of(doc: &Value, group: &str) -> Vec<Value> {
    branch_list(doc)
        .into_iter()
        .filter(|b| b["state"] == "warm" && groups_of(b) == [group])
        .collect()
}

fn branch_by_eni(doc: &Value, eni: &str) -> Option<Value> {
    branch_list(doc).into_iter().find(|b| b["eniId"] == eni)
}

fn add_request(ns: &str, name: &str, container: &str, uid: &str) -> AddNetworkRequest {
    AddNetworkRequest {
        client_version: vpc_cni_proto::CONTRACT_VERSION.into(),
        network_name: "aws-cni".into(),
        container_id: container.into(),
        if_name: "eth0".into(),
        netns: format!("/var/run/netns/{container}"),
        k8s_pod_namespace: ns.into(),
        k8s_pod_name: name.into(),
        k8s_pod_infra_container_id: container.into(),
        k8s_pod_uid: uid.into(),
        ..Default::default()
    }
}

fn add(node: &Node, req: AddNetworkRequest) -> AddNetworkReply {
    blocking(|| {
        harness::rpc::with_client(&node.ipamd.socket, |mut c| async move {
            Ok(c.add_network(req).await?.into_inner())
        })
    })
    .expect("AddNetwork")
}

fn del(node: &Node, ns: &str, name: &str, container: &str, uid: &str) -> DelNetworkReply {
    let req = DelNetworkRequest {
        client_version: vpc_cni_proto::CONTRACT_VERSION.into(),
        network_name: "aws-cni".into(),
        container_id: container.into(),
        if_name: "eth0".into(),
        k8s_pod_namespace: ns.into(),
        k8s_pod_name: name.into(),
        k8s_pod_infra_container_id: container.into(),
        k8s_pod_uid: uid.into(),
        reason: "PodDeleted".into(),
    };
    blocking(|| {
        harness::rpc::with_client(&node.ipamd.socket, |mut c| async move {
            Ok(c.del_network(req).await?.into_inner())
        })
    })
    .expect("DelNetwork")
}

fn calls(node: &Node) -> Value {
    blocking(|| node.vpc.calls()).expect("GET /sim/calls")
}

fn sim_state(node: &Node) -> Value {
    blocking(|| node.vpc.state()).expect("GET /sim/state")
}

/// VLAN id by branch ENI id, of the node's trunk, as EC2 has them.
fn associations(state: &Value, trunk: &str) -> BTreeMap<String, u64> {
    state["trunkAssociations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["trunkInterfaceId"] == trunk)
        .map(|a| {
            let branch = a["branchInterfaceId"].as_str().unwrap().to_string();
            (branch, a["vlanId"].as_u64().unwrap())
        })
        .collect()
}

fn sim_eni(state: &Value, id: &str) -> Option<Value> {
    state["enis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .cloned()
}

/// Waits until ipamd's EC2 activity has stopped: the call counters stay still for 2 s.
fn quiet_calls(node: &Node) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = calls(node);
    loop {
        blocking(|| std::thread::sleep(Duration::from_secs(2)));
        let now = calls(node);
        if now == last {
            return now;
        }
        assert!(Instant::now() < deadline, "ipamd never stopped calling EC2");
        last = now;
    }
}

/// The trunk, its label and capacity, and one warm branch each for the node's groups and
/// the policy's; the trunk sits at the highest device index and has no source rule.
fn check_trunk(node: &Node, doc: &Value) -> (String, u32) {
    let trunk = doc["trunk"]["ID"].as_str().unwrap().to_string();
    let state = sim_state(node);
    let eni = sim_eni(&state, &trunk).expect("trunk in ec2");
    assert_eq!(eni["interfaceType"], "trunk");
    assert_eq!(eni["attachment"]["instanceId"], INSTANCE);
    assert_eq!(
        eni["attachment"]["deviceIndex"], 2,
        "m5.large's highest index"
    );
    assert_eq!(eni["attachment"]["deleteOnTermination"], true);
    assert_eq!(eni["groups"], json!(["sg-node"]));
    assert_eq!(eni["tags"]["node.k8s.amazonaws.com/instance_id"], INSTANCE);
    assert_eq!(
        eni["privateIps"].as_array().unwrap().len(),
        1,
        "no addresses for pods"
    );

    let mac = eni["mac"].as_str().unwrap();
    let links = ip_json(node.netns(), &["link", "show"]).unwrap();
    let link = links
        .iter()
        .find(|l| l["address"] == mac)
        .expect("trunk link on the node");
    assert_eq!(link["ifname"], "eth2");
    let trunk_ip = eni["primaryIp"].as_str().unwrap();
    let rules = ip_json(node.netns(), &["rule", "show"]).unwrap();
    assert!(
        !rules.iter().any(|r| r["src"] == trunk_ip),
        "the trunk got a source rule: {rules:?}"
    );
    let ifindex = link["ifindex"].as_u64().unwrap() as u32;
    (trunk, ifindex)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_pods_get_warm_branches_without_ec2_calls() {
    let (api, client) = cluster().await;
    create_pod(&client, SHOP, "catalog-0", "catalog", true).await;
    let mut node = start_node(&api, "m5.large");
    let doc = wait_branches(&node, "a warm branch for each set", 60, |d| {
        let ready = !d["trunk"].is_null()
            && warm_of(d, "sg-node").len() == 1
            && warm_of(d, "sg-catalog").len() == 1;
        ready.then(|| d.clone())
    });
    // Strict mode's known limits are said where operators look: early demux breaks kubelet
    // probes, and link-local destinations cannot be reached from branch pods.
    let log = node.ipamd.log_tail(400);
    assert!(
        log.contains("tcp early demux is on"),
        "no early-demux warning:\n{log}"
    );
    assert!(
        log.contains("cannot reach link-local addresses"),
        "no link-local warning:\n{log}"
    );
    let (trunk, trunk_ifindex) = check_trunk(&node, &doc);
    check_announced(&node, &client, &doc).await;
    check_branch_enis(&node, &doc, &trunk);

    // The ADD takes the warm sg-catalog branch and makes no EC2 call at all.
    let warm = warm_of(&doc, "sg-catalog").remove(0);
    let pods: Api<Pod> = Api::namespaced(client.clone(), SHOP);
    let uid = pods.get("catalog-0").await.unwrap().uid().unwrap();
    let before = quiet_calls(&node);
    let reply = add(&node, add_request(SHOP, "catalog-0", "c-catalog-0", &uid));
    let after = calls(&node);
    assert!(reply.success, "ADD failed: {}", reply.failure_reason);
    assert_eq!(
        after, before,
        "the ADD of a pod with a warm branch called EC2"
    );
    check_granted(&reply, &warm, trunk_ifindex);
    check_annotation(&pods.get("catalog-0").await.unwrap(), &warm);

    // The pool refills the set, then the same ADD again answers the same branch.
    wait_branches(&node, "the sg-catalog set refilled", 30, |d| {
        (warm_of(d, "sg-catalog").len() == 1).then_some(())
    });
    let again = add(&node, add_request(SHOP, "catalog-0", "c-catalog-0", &uid));
    assert_eq!(
        (again.eniid.as_str(), again.pod_vlan_id),
        (reply.eniid.as_str(), reply.pod_vlan_id)
    );

    restart_keeps_assignments(&mut node, &client, &trunk, &reply).await;
    del_cools_the_branch_down(&node, &client, &reply, &uid).await;
}

/// The trunk label and branch capacity on the Node, and strict mode's local rule.
async fn check_announced(node: &Node, client: &Client, doc: &Value) {
    assert_eq!(doc["branchLimit"], 9);
    let nodes: Api<K8sNode> = Api::all(client.clone());
    let k8s_node = eventually(|| async {
        let n = nodes.get(NODE).await.ok()?;
        let labelled = n.labels().get(HAS_TRUNK_LABEL).map(String::as_str) == Some("true");
        labelled.then_some(n)
    })
    .await;
    let capacity = k8s_node.status.unwrap().capacity.unwrap_or_default();
    assert_eq!(
        capacity.get(POD_ENI_RESOURCE).map(|q| q.0.as_str()),
        Some("9")
    );
    let local: Vec<u64> = ip_json(node.netns(), &["rule", "show"])
        .unwrap()
        .iter()
        .filter(|r| r["table"] == "local")
        .map(|r| r["priority"].as_u64().unwrap())
        .collect();
    assert_eq!(local, [20], "strict mode moves the local rule");
}

/// Branches carry the controller's tags and their set's groups, in the node's subnet, on the
/// VLAN id EC2 has for them.
fn check_branch_enis(node: &Node, doc: &Value, trunk: &str) {
    let state = sim_state(node);
    let assoc = associations(&state, trunk);
    for b in branch_list(doc) {
        let eni = sim_eni(&state, b["eniId"].as_str().unwrap()).unwrap();
        assert_eq!(eni["groups"], b["securityGroups"]);
        assert_eq!(
            eni["subnetId"], "subnet-0a11111111111111a",
            "the node's subnet"
        );
        let tags = &eni["tags"];
        assert_eq!(tags["vpcresources.k8s.aws/trunk-eni-id"], trunk);
        assert_eq!(
            tags["vpcresources.k8s.aws/vlan-id"],
            b["vlanId"].to_string()
        );
        assert_eq!(tags["node.k8s.amazonaws.com/instance_id"], INSTANCE);
        assert_eq!(tags["eks:eni:owner"], "eks-vpc-resource-controller");
        assert_eq!(assoc[b["eniId"].as_str().unwrap()], b["vlanId"]);
    }
}

/// The reply names the warm branch the way the plugin needs it.
fn check_granted(reply: &AddNetworkReply, warm: &Value, trunk_ifindex: u32) {
    let vlan = warm["vlanId"].as_u64().unwrap() as i32;
    assert_eq!(reply.eniid, warm["eniId"].as_str().unwrap());
    assert_eq!(reply.pod_vlan_id, vlan);
    assert_eq!(reply.pod_enimac, warm["mac"].as_str().unwrap());
    assert_eq!(reply.pod_eni_subnet_gw, "10.0.0.1");
    assert_eq!(reply.parent_if_index as u32, trunk_ifindex);
    assert_eq!(reply.subnet_cidr, "10.0.0.0/24");
    let meta = &reply.ip_allocation_metadata[0];
    assert_eq!(meta.i_pv4_addr, warm["ipv4"].as_str().unwrap());
    assert_eq!((meta.device_number, meta.route_table_id), (-1, 100 + vlan));
}

/// The annotation the controller would have written, on the right pod.
fn check_annotation(pod: &Pod, warm: &Value) {
    let value: Value =
        serde_json::from_str(pod.annotations().get(POD_ENI_ANNOTATION).unwrap()).unwrap();
    assert_eq!(value[0]["eniId"], warm["eniId"]);
    assert_eq!(value[0]["vlanId"], warm["vlanId"]);
    assert_eq!(value[0]["ifAddress"], warm["mac"]);
    assert_eq!(value[0]["privateIp"], warm["ipv4"]);
    assert_eq!(value[0]["subnetCidr"], "10.0.0.0/24");
}

/// A restart keeps catalog-0's branch and reuses no VLAN id that is still associated.
async fn restart_keeps_assignments(
    node: &mut Node,
    client: &Client,
    trunk: &str,
    held: &AddNetworkReply,
) {
    let before = associations(&sim_state(node), trunk);
    blocking(|| node.ipamd.restart()).expect("restart ipamd");
    let node = &*node;
    let doc = wait_branches(node, "branches restored", 30, |d| {
        (!d["trunk"].is_null()).then(|| d.clone())
    });
    let b = branch_by_eni(&doc, &held.eniid).expect("held branch restored");
    assert_eq!(b["state"], "assigned");
    assert_eq!(b["pod"]["name"], "catalog-0");
    assert_eq!(b["vlanId"], held.pod_vlan_id);
    let vlans: BTreeSet<u64> = doc["vlanIds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        vlans,
        before.values().copied().collect(),
        "every associated id is taken"
    );

    // A second catalog pod gets another branch; the refill after it picks a fresh id.
    create_pod(client, SHOP, "catalog-1", "catalog", true).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), SHOP);
    let uid = pods.get("catalog-1").await.unwrap().uid().unwrap();
    let reply = add(node, add_request(SHOP, "catalog-1", "c-catalog-1", &uid));
    assert!(reply.success, "ADD catalog-1: {}", reply.failure_reason);
    assert_ne!(reply.eniid, held.eniid);
    assert_ne!(reply.pod_vlan_id, held.pod_vlan_id);
    wait_branches(
        node,
        "the sg-catalog set refilled after the restart",
        30,
        |d| (warm_of(d, "sg-catalog").len() == 1).then_some(()),
    );
    let after = associations(&sim_state(node), trunk);
    let ids: Vec<u64> = after.values().copied().collect();
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "a vlan id used twice: {after:?}");
    for (eni, vlan) in &before {
        assert_eq!(
            after.get(eni),
            Some(vlan),
            "branch {eni} changed its vlan id"
        );
    }
    assert!(
        !node.ipamd.log_tail(400).contains("InvalidVlanId.Duplicate"),
        "ipamd asked for a vlan id in use"
    );
}

/// DEL lets the branch cool down: during the cooldown no pod gets it, afterwards it is
/// warm again (or deleted as a spare above the target).
async fn del_cools_the_branch_down(
    node: &Node,
    client: &Client,
    held: &AddNetworkReply,
    uid: &str,
) {
    // A DEL that names a different sandbox of the pod leaves the branch alone.
    let stale = del(node, SHOP, "catalog-0", "c-older-sandbox", "some-older-uid");
    assert!(stale.success && !stale.found);
    assert_eq!(
        branch_by_eni(&branches(node), &held.eniid).unwrap()["state"],
        "assigned"
    );

    // The pod object is gone before the runtime's DEL: the branch is released all the same.
    let pods: Api<Pod> = Api::namespaced(client.clone(), SHOP);
    pods.delete("catalog-0", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod catalog-0");
    let reply = del(node, SHOP, "catalog-0", "c-catalog-0", uid);
    assert!(reply.success && reply.found);
    assert_eq!(reply.pod_vlan_id, held.pod_vlan_id);
    assert_eq!(
        reply.ip_allocation_metadata[0].i_pv4_addr,
        held.ip_allocation_metadata[0].i_pv4_addr
    );
    let released_at = Instant::now();
    assert_eq!(
        branch_by_eni(&branches(node), &held.eniid).unwrap()["state"],
        "cooling"
    );

    create_pod(client, SHOP, "catalog-2", "catalog", true).await;
    let uid2 = pods.get("catalog-2").await.unwrap().uid().unwrap();
    let second = add(node, add_request(SHOP, "catalog-2", "c-catalog-2", &uid2));
    assert!(second.success, "ADD catalog-2: {}", second.failure_reason);
    if released_at.elapsed() < Duration::from_secs(COOLDOWN_S) {
        assert_ne!(
            second.eniid, held.eniid,
            "a cooling branch went to another pod"
        );
    }

    wait_branches(
        node,
        "the released branch out of its cooldown",
        30,
        |d| match branch_by_eni(d, &held.eniid) {
            None => Some(()),
            Some(b) if b["state"] == "warm" => Some(()),
            Some(_) => None,
        },
    );
    assert!(released_at.elapsed() >= Duration::from_secs(COOLDOWN_S));
}

/// Polls an async probe every 100 ms for up to 30 s.
async fn eventually<T, F, Fut>(probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trunk_incapable_type_is_reported_and_regular_pods_still_run() {
    let (api, client) = cluster().await;
    create_pod(&client, SHOP, "catalog-0", "catalog", true).await;
    create_pod(&client, SHOP, "web-0", "web", false).await;
    let node = start_node(&api, "t3.large");

    let doc = branches(&node);
    assert_eq!(doc["branchLimit"], 0);
    assert!(doc["trunk"].is_null());
    let log = node.ipamd.log_tail(200);
    assert!(log.contains("t3.large cannot have a trunk eni"), "{log}");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event = eventually(|| async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("Unsupported")
                && e.involved_object.name.as_deref() == Some(NODE)
        })
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert!(event.message.unwrap().contains("t3.large"));

    // No trunk appears and no ENI slot is held back for one.
    blocking(|| std::thread::sleep(Duration::from_secs(2)));
    let state = sim_state(&node);
    let trunks = state["enis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["interfaceType"] == "trunk")
        .count();
    assert_eq!(trunks, 0);

    // A branch pod is refused with the reason; a regular pod is served through the plugin.
    let pods: Api<Pod> = Api::namespaced(client.clone(), SHOP);
    let uid = pods.get("catalog-0").await.unwrap().uid().unwrap();
    let refused = add(&node, add_request(SHOP, "catalog-0", "c-catalog-0", &uid));
    assert!(!refused.success);
    assert!(
        refused.failure_reason.contains("supports no branch enis"),
        "{}",
        refused.failure_reason
    );
    let uid = pods.get("web-0").await.unwrap().uid().unwrap();
    let regular = add(&node, add_request(SHOP, "web-0", "c-web-0", &uid));
    assert!(regular.success, "{}", regular.failure_reason);
    assert_eq!(regular.pod_vlan_id, 0);
    let pod = blocking(|| node.pod("plain-0", "c-plain-0")).unwrap();
    let result = blocking(|| node.add(&pod.pod));
    assert!(result["ips"][0]["address"].as_str().is_some(), "{result}");
}

/// A trunk that cannot be made keeps its ENI slot from the address pool only for a few
/// attempts, reports why, and comes once EC2 lets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_trunk_creation_gives_its_eni_slot_back() {
    let (api, client) = cluster().await;
    let denied = json!({
        "action": "CreateNetworkInterface",
        "error": "UnauthorizedOperation",
        "message": "not authorized to create trunk interfaces",
        "times": 3
    });
    let node = start_node_with_faults(&api, "m5.large", &[denied]);

    // m5.large has 3 ENI slots; while the trunk is pending the address pool may use 2.
    let first = branches(&node);
    assert!(first["trunk"].is_null(), "{first:#}");
    assert_eq!(first["addressPoolMaxEnis"], 2, "{first:#}");

    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event = eventually(|| async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("TrunkENICreationFailed"))
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    let note = event.message.unwrap_or_default();
    assert!(note.contains("UnauthorizedOperation"), "{note}");

    wait_branches(&node, "the slot given back after three failures", 30, |d| {
        (d["trunk"].is_null() && d["addressPoolMaxEnis"] == 3).then_some(())
    });
    let doc = wait_branches(&node, "the trunk once ec2 allows it", 30, |d| {
        (!d["trunk"].is_null()).then(|| d.clone())
    });
    assert_eq!(doc["addressPoolMaxEnis"], 2);
    assert_eq!(doc["trunkSlotReserved"], true);
    let calls = calls(&node);
    assert_eq!(
        calls["CreateNetworkInterface"].as_u64().map(|n| n >= 4),
        Some(true),
        "{calls}"
    );
}

/// A branch whose association failed and whose deletion failed too is left on no trunk; the
/// periodic sweep finds it twice and deletes it, and leaves the pool's branches alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_left_on_no_trunk_is_swept_away() {
    let (api, _client) = cluster().await;
    let faults = [
        json!({"action": "AssociateTrunkInterface", "error": "InvalidParameterValue",
               "message": "association refused"}),
        json!({"action": "DeleteNetworkInterface", "error": "UnauthorizedOperation",
               "message": "not authorized to delete"}),
    ];
    let node = start_node_with(
        &api,
        "m5.large",
        &faults,
        &[("VPC_CNI_LEAK_SWEEP_SECONDS", "2")],
    );
    let left_over = |state: &Value| -> Vec<String> {
        let associated = state["trunkAssociations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["branchInterfaceId"].clone())
            .collect::<Vec<_>>();
        state["enis"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["description"] == "aws-k8s-branch-eni" && !associated.contains(&e["id"]))
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let leaked = eventually(|| async {
        let l = left_over(&sim_state(&node));
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(leaked.len(), 1, "{leaked:?}");
    eventually(|| async { left_over(&sim_state(&node)).is_empty().then_some(()) }).await;
    let doc = wait_branches(&node, "warm branches after the sweep", 30, |d| {
        (!branch_list(d).is_empty()).then(|| d.clone())
    });
    let state = sim_state(&node);
    let trunk = doc["trunk"]["ID"].as_str().unwrap();
    for b in branch_list(&doc) {
        let eni = b["eniId"].as_str().unwrap();
        assert!(
            sim_eni(&state, eni).is_some(),
            "pool branch {eni} was deleted"
        );
        assert!(
            associations(&state, trunk).contains_key(eni),
            "{eni} not on the trunk"
        );
    }
    assert!(
        node.ipamd
            .log_tail(400)
            .contains("leaked branch or trunk eni deleted"),
        "{}",
        node.ipamd.log_tail(40)
    );
}

/// A branch created for a pod's ADD is in no pool until its association returns; a sweep in
/// that time must not take it for leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_under_creation_is_not_swept() {
    let (api, client) = cluster().await;
    create_pod(&client, SHOP, "catalog-0", "catalog", true).await;
    let slow = json!({"action": "AssociateTrunkInterface", "delayMs": 6000});
    let env = [
        ("WARM_BRANCH_ENI_TARGET", "0"),
        ("VPC_CNI_LEAK_SWEEP_SECONDS", "1"),
    ];
    let node = start_node_with(&api, "m5.large", &[slow], &env);
    wait_branches(&node, "the trunk", 60, |d| {
        (!d["trunk"].is_null()).then_some(())
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), SHOP);
    let uid = pods.get("catalog-0").await.unwrap().uid().unwrap();
    let reply = add(&node, add_request(SHOP, "catalog-0", "c-catalog-0", &uid));
    assert!(
        reply.success,
        "ADD failed: {}\n{}",
        reply.failure_reason,
        node.ipamd.log_tail(30)
    );
    let state = sim_state(&node);
    assert!(
        sim_eni(&state, &reply.eniid).is_some(),
        "{} was deleted",
        reply.eniid
    );
    let log = node.ipamd.log_tail(400);
    assert!(!log.contains("leaked branch"), "{log}");
}

/// ENIs whose attach failed and whose clean-up failed too (the trunk's, or an address
/// ENI's, whichever ipamd tried first) are swept; the trunk that did attach stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enis_left_unattached_by_failed_attaches_are_swept() {
    let (api, _client) = cluster().await;
    let faults = [
        json!({"action": "AttachNetworkInterface", "error": "InvalidParameterValue",
               "message": "attach refused", "times": 2}),
        json!({"action": "DeleteNetworkInterface", "error": "UnauthorizedOperation",
               "message": "not authorized to delete", "times": 2}),
    ];
    let env = [("VPC_CNI_LEAK_SWEEP_SECONDS", "2")];
    let node = start_node_with(&api, "m5.large", &faults, &env);
    let unattached = |state: &Value| -> Vec<Value> {
        state["enis"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["attachment"].is_null() && e["trunkAssociationId"].is_null())
            .filter(|e| e["tags"]["node.k8s.amazonaws.com/instance_id"] == INSTANCE)
            .cloned()
            .collect()
    };
    // Every unattached ENI seen until a leaked trunk is among them.
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.values().any(|e| e["interfaceType"] == "trunk") {
        assert!(Instant::now() < deadline, "no leaked trunk seen: {seen:#?}");
        for e in unattached(&sim_state(&node)) {
            seen.insert(e["id"].as_str().unwrap().to_string(), e);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(|| async { unattached(&sim_state(&node)).is_empty().then_some(()) }).await;
    let doc = wait_branches(&node, "the trunk", 30, |d| {
        (!d["trunk"].is_null()).then(|| d.clone())
    });
    let trunk = doc["trunk"]["ID"].as_str().unwrap();
    assert!(sim_eni(&sim_state(&node), trunk).unwrap()["attachment"].is_object());
}
