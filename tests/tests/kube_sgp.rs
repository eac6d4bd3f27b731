//! Security groups for pods against a real kube-apiserver: the SecurityGroupPolicy CRD and the
//! example policy apply, ipamd's watch caches see this node's pods, ServiceAccounts and
//! policies, pods get the groups the VPC Resource Controller would give them, and ipamd's
//! writes (pod-eni annotation, trunk label, branch capacity, node events) land as a user reads
//! them back.
//!
//! Needs etcd (Debian etcd-server) and the kube-apiserver that tests/kube/build-apiserver.sh
//! builds; fails when either is missing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::kube::ApiServer;
use ipamd::sgp::annotation::{self, BranchEni, POD_ENI_ANNOTATION};
use ipamd::sgp::kube::{
    Caches, EventKind, KubeError, NodeClient, HAS_TRUNK_LABEL, POD_ENI_RESOURCE,
};
use ipamd::sgp::policy::SecurityGroupPolicy;
use ipamd::sgp::warm::GroupSet;
use k8s_openapi::api::core::v1::{Event, Node, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use kube::{Client, CustomResourceExt, ResourceExt};
use serde_json::{json, Value};

const NODE: &str = "node-a";

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

async fn start() -> (ApiServer, Client) {
    let server = ApiServer::start()
        .await
        .unwrap_or_else(|e| panic!("this suite needs a real kube-apiserver: {e:#}"));
    let client = server.client().await.expect("admin client");
    (server, client)
}

/// Polls `probe` until it gives a value; fails after 20 s naming `what`.
async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod(name: &str, node: &str, labels: Value, account: &str, branch: bool) -> Pod {
    let limits = if branch {
        json!({ "cpu": "100m", POD_ENI_RESOURCE: "1" })
    } else {
        json!({ "cpu": "100m" })
    };
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "nodeName": node,
            "serviceAccountName": account,
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "app",
                "image": "registry.k8s.io/pause:3.9",
                "resources": { "limits": limits }
            }]
        }
    }))
    .expect("pod json")
}

async fn create_pod(client: &Client, ns: &str, pod: &Pod) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {ns}/{}: {e}", pod.name_any()))
}

async fn create_account(client: &Client, ns: &str, name: &str, labels: Value) {
    let account: ServiceAccount = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels },
        "automountServiceAccountToken": false
    }))
    .unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    accounts
        .create(&PostParams::default(), &account)
        .await
        .unwrap_or_else(|e| panic!("create service account {ns}/{name}: {e}"));
}

async fn create_policy(client: &Client, ns: &str, name: &str, spec: Value) {
    let policy: SecurityGroupPolicy = serde_json::from_value(json!({
        "apiVersion": "vpcresources.k8s.aws/v1beta1",
        "kind": "SecurityGroupPolicy",
        "metadata": { "name": name },
        "spec": spec
    }))
    .unwrap();
    let policies: Api<SecurityGroupPolicy> = Api::namespaced(client.clone(), ns);
    policies
        .create(&PostParams::default(), &policy)
        .await
        .unwrap_or_else(|e| panic!("create policy {ns}/{name}: {e}"));
}

async fn apply_example_policy(client: &Client, ns: &str) {
    let path = repo_file("conf/examples/sgp-catalog.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let policy: SecurityGroupPolicy = serde_saphyr::from_str(&text).unwrap();
    let policies: Api<SecurityGroupPolicy> = Api::namespaced(client.clone(), ns);
    policies
        .create(&PostParams::default(), &policy)
        .await
        .expect("create the example policy");
}

async fn install_crd(server: &ApiServer, client: &Client) {
    let path = repo_file("conf/crds/securitygrouppolicies.yaml");
    server
        .install_crd(client, &path)
        .await
        .unwrap_or_else(|e| panic!("install {}: {e:#}", path.display()));
}

fn groups(caches: &Caches, ns: &str, name: &str) -> Vec<String> {
    let pod = caches
        .pod(ns, name)
        .unwrap_or_else(|| panic!("pod {ns}/{name} not cached"));
    caches.security_groups_for(&pod).unwrap().groups
}

/// Namespace `shop` holds the example policy (app=catalog → sg-catalog), a policy selecting by
/// ServiceAccount and one selecting by both; namespace `other` selects everything.
async fn policies_and_accounts(server: &ApiServer, client: &Client) {
    install_crd(server, client).await;
    for ns in ["shop", "other"] {
        server.ensure_namespace(client, ns).await.unwrap();
    }
    apply_example_policy(client, "shop").await;
    let db_readers = json!({
        "serviceAccountSelector": {
            "matchExpressions": [{ "key": "db", "operator": "In", "values": ["read", "write"] }]
        },
        "securityGroups": { "groupIds": ["sg-db"] }
    });
    create_policy(client, "shop", "db-readers", db_readers).await;
    let api_team = json!({
        "podSelector": { "matchLabels": { "app": "api" } },
        "serviceAccountSelector": { "matchExpressions": [{ "key": "team", "operator": "Exists" }] },
        "securityGroups": { "groupIds": ["sg-api", "sg-catalog"] }
    });
    create_policy(client, "shop", "api-team", api_team).await;
    let everything = json!({ "podSelector": {}, "securityGroups": { "groupIds": ["sg-other"] } });
    create_policy(client, "other", "everything", everything).await;

    create_account(
        client,
        "shop",
        "reader",
        json!({ "db": "read", "team": "data" }),
    )
    .await;
    create_account(client, "shop", "plain", json!({ "db": "none" })).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_matches_the_resource_type_and_rejects_bad_policies() {
    let (server, client) = start().await;
    install_crd(&server, &client).await;
    server.ensure_namespace(&client, "shop").await.unwrap();

    // The YAML users apply and the Rust type ipamd reads name the same resource.
    let derived = SecurityGroupPolicy::crd();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let applied = crds
        .get("securitygrouppolicies.vpcresources.k8s.aws")
        .await
        .unwrap();
    assert_eq!(applied.spec.group, derived.spec.group);
    assert_eq!(applied.spec.scope, derived.spec.scope);
    assert_eq!(applied.spec.names.kind, derived.spec.names.kind);
    assert_eq!(applied.spec.names.plural, derived.spec.names.plural);
    assert_eq!(
        applied.spec.names.short_names,
        Some(vec!["sgp".to_string()])
    );
    assert_eq!(applied.spec.versions[0].name, "v1beta1");

    // The schema holds policies to one to sixteen groups.
    let no_groups = json!({ "podSelector": {}, "securityGroups": { "groupIds": [] } });
    let seventeen: Vec<String> = (0..17).map(|i| format!("sg-{i}")).collect();
    let too_many = json!({ "podSelector": {}, "securityGroups": { "groupIds": seventeen } });
    let resource = ApiResource::erase::<SecurityGroupPolicy>(&());
    let policies: Api<DynamicObject> = Api::namespaced_with(client.clone(), "shop", &resource);
    for (name, spec) in [("none", no_groups), ("many", too_many)] {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "vpcresources.k8s.aws/v1beta1",
            "kind": "SecurityGroupPolicy",
            "metadata": { "name": name },
            "spec": spec
        }))
        .unwrap();
        let err = policies
            .create(&PostParams::default(), &object)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("groupIds"), "policy {name}: {err}");
    }
    apply_example_policy(&client, "shop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_caches_give_each_pod_its_groups() {
    let (server, client) = start().await;
    policies_and_accounts(&server, &client).await;
    let caches = Caches::start(&client, NODE);
    caches
        .wait_synced(Duration::from_secs(30))
        .await
        .expect("caches synced");

    let cases: [(&str, &str, Value, &str, &[&str]); 6] = [
        // podSelector only.
        (
            "shop",
            "catalog-0",
            json!({ "app": "catalog" }),
            "default",
            &["sg-catalog"],
        ),
        // serviceAccountSelector only.
        (
            "shop",
            "report-0",
            json!({ "app": "report" }),
            "reader",
            &["sg-db"],
        ),
        // Both selectors match, with the other two policies: union in policy-name order
        // (api-team, catalog, db-readers) without the repeated sg-catalog.
        (
            "shop",
            "api-0",
            json!({ "app": "api" }),
            "reader",
            &["sg-api", "sg-catalog", "sg-db"],
        ),
        // Pod selector matches but the ServiceAccount has no team label.
        ("shop", "api-1", json!({ "app": "api" }), "plain", &[]),
        ("shop", "web-0", json!({ "app": "web" }), "default", &[]),
        // The other namespace's policy applies there and only there.
        (
            "other",
            "any-0",
            json!({ "app": "catalog" }),
            "default",
            &["sg-other"],
        ),
    ];
    for (ns, name, labels, account, _) in &cases {
        create_pod(&client, ns, &pod(name, NODE, labels.clone(), account, true)).await;
    }
    let elsewhere = pod(
        "catalog-9",
        "node-b",
        json!({ "app": "catalog" }),
        "default",
        true,
    );
    create_pod(&client, "shop", &elsewhere).await;

    eventually("pods, accounts and policies in the caches", || {
        let all_pods = cases
            .iter()
            .all(|(ns, name, ..)| caches.pod(ns, name).is_some());
        let accounts = caches.service_account("shop", "plain").is_some();
        (all_pods && accounts && caches.policies.len() == 4).then_some(())
    })
    .await;
    assert!(
        caches.pod("shop", "catalog-9").is_none(),
        "a pod of another node was cached"
    );
    for (ns, name, _, _, want) in &cases {
        assert_eq!(
            groups(&caches, ns, name),
            *want,
            "groups of pod {ns}/{name}"
        );
    }

    let likely = caches.likely_group_sets();
    for set in [
        &["sg-catalog"][..],
        &["sg-db"],
        &["sg-api", "sg-catalog"],
        &["sg-other"],
    ] {
        let set = GroupSet::new(set.iter().copied());
        assert!(likely.contains(&set), "{set} missing from {likely:?}");
    }
    assert_eq!(likely.len(), 5, "{likely:?}");

    // Later edits reach the caches through the watch.
    let policies: Api<SecurityGroupPolicy> = Api::namespaced(client.clone(), "shop");
    let patch = json!({ "spec": { "securityGroups": { "groupIds": ["sg-catalog-v2"] } } });
    policies
        .patch("catalog", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    eventually("the edited policy", || {
        (groups(&caches, "shop", "catalog-0") == ["sg-catalog-v2"]).then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    pods.delete("web-0", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually("the deleted pod to leave the cache", || {
        caches.pod("shop", "web-0").is_none().then_some(())
    })
    .await;
}

fn branch(vlan_id: u16) -> BranchEni {
    BranchEni {
        eni_id: "eni-0b1c2d3e4f5a6b7c8".into(),
        mac: "02:5e:aa:10:20:30".into(),
        private_ip: "10.0.1.20".parse().unwrap(),
        ipv6: None,
        vlan_id,
        subnet: "10.0.1.0/24".parse().unwrap(),
        subnet_v6: None,
        association_id: Some("trunk-assoc-0a1b2c3d4e5f60718".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_annotation_is_written_for_the_right_pod_and_validated_on_read() {
    let (server, client) = start().await;
    install_crd(&server, &client).await;
    server.ensure_namespace(&client, "shop").await.unwrap();
    let created = create_pod(
        &client,
        "shop",
        &pod(
            "catalog-0",
            NODE,
            json!({ "app": "catalog" }),
            "default",
            true,
        ),
    )
    .await;
    let uid = created.uid().unwrap();
    let caches = Caches::start(&client, NODE);
    caches.wait_synced(Duration::from_secs(30)).await.unwrap();
    let node = NodeClient::new(client.clone(), NODE);

    // A stale UID (the pod was recreated under the same name) must not get the branch.
    let stale = node
        .annotate_pod(
            "shop",
            "catalog-0",
            "00000000-0000-0000-0000-000000000000",
            &[branch(3)],
        )
        .await;
    let err = stale.expect_err("annotation with a stale uid was accepted");
    assert!(matches!(err, KubeError::PodReplaced { .. }), "{err}");
    let read = node
        .pod_annotation("shop", "catalog-0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.pod_eni, None);

    node.annotate_pod("shop", "catalog-0", &uid, &[branch(3)])
        .await
        .unwrap();
    let read = node
        .pod_annotation("shop", "catalog-0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.uid, uid);
    let written: Value = serde_json::from_str(read.pod_eni.as_deref().unwrap()).unwrap();
    assert_eq!(written[0]["vlanId"], json!(3));
    assert_eq!(written[0]["eniId"], json!("eni-0b1c2d3e4f5a6b7c8"));
    let cached = eventually("the annotation in the cache", || {
        caches.pod_branch("shop", "catalog-0", 9).unwrap()
    })
    .await;
    assert_eq!(cached, branch(3));
    assert_eq!(cached.gateway().to_string(), "10.0.1.1");
    assert!(node.pod_annotation("shop", "gone").await.unwrap().is_none());

    // An annotation someone else wrote with an impossible VLAN id is refused, not used.
    let mut forged: Value = serde_json::from_str(&annotation::render(&[branch(3)])).unwrap();
    forged[0]["vlanId"] = json!(4095);
    let patch =
        json!({ "metadata": { "annotations": { POD_ENI_ANNOTATION: forged.to_string() } } });
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    pods.patch("catalog-0", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let err = eventually("the forged annotation in the cache", || {
        caches.pod_branch("shop", "catalog-0", 9).err()
    })
    .await;
    assert!(
        err.to_string().contains("vlanId 4095 is outside 1..=4094"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_label_capacity_and_events() {
    let (_server, client) = start().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(NODE.into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/os".into(),
                "linux".into(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let writer = NodeClient::new(client.clone(), NODE);

    writer.label_trunk(false).await.unwrap();
    writer.label_trunk(true).await.unwrap();
    writer.advertise_branch_capacity(9).await.unwrap();
    let read = nodes.get(NODE).await.unwrap();
    assert_eq!(
        read.labels().get(HAS_TRUNK_LABEL).map(String::as_str),
        Some("true")
    );
    assert_eq!(
        read.labels().get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    let status = read.status.unwrap();
    for (what, list) in [
        ("capacity", status.capacity),
        ("allocatable", status.allocatable),
    ] {
        let quantity = list.unwrap_or_default().get(POD_ENI_RESOURCE).cloned();
        assert_eq!(quantity.map(|q| q.0), Some("9".to_string()), "node {what}");
    }

    let note = "trunk eni not attached: ec2 CreateNetworkInterface: UnauthorizedOperation";
    writer
        .node_event(EventKind::Warning, "TrunkENICreationFailed", note)
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let list = events.list(&ListParams::default()).await.unwrap();
    let event = list
        .items
        .iter()
        .find(|e| e.reason.as_deref() == Some("TrunkENICreationFailed"))
        .expect("event recorded");
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(event.message.as_deref(), Some(note));
    // What `kubectl describe node` selects events by.
    let about = &event.involved_object;
    assert_eq!(
        (about.kind.as_deref(), about.name.as_deref()),
        (Some("Node"), Some(NODE))
    );
    assert_eq!(about.namespace, None);
}
