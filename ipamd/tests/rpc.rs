//! CNIBackend over a real unix socket, served by ipamd's own server code and called with the
//! plugin's client. EC2 is not involved: the pool manager does not run, so the pool is
//! exactly the addresses each test puts on its ENIs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hyper_util::rt::TokioIo;
use ipamd::checkpoint::{CheckpointFile, JsonFile};
use ipamd::config::Config;
use ipamd::datastore::{Datastore, EniInfo, Key, PodMeta, Restored};
use ipamd::imds::Identity;
use ipamd::metrics::Metrics;
use ipamd::node::Node;
use ipamd::pool::Limits;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tonic::transport::{Endpoint, Uri};
use vpc_cni::ipamd::IpamdClient;
use vpc_cni_proto::cni_backend_client::CniBackendClient;
use vpc_cni_proto::{
    AddNetworkRequest, Attachment, DelNetworkRequest, GarbageCollectRequest, StatusRequest,
};

struct Daemon {
    dir: tempfile::TempDir,
    node: Arc<Node>,
    stop: watch::Sender<bool>,
}

impl Daemon {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("run/ipamd.sock")
    }

    fn checkpoint(&self) -> CheckpointFile {
        let text = std::fs::read_to_string(self.dir.path().join("ipam.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    async fn client(&self) -> IpamdClient {
        IpamdClient::connect(&self.socket())
            .await
            .expect("connect to ipamd")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn identity() -> Identity {
    Identity {
        instance_id: "i-0test".into(),
        instance_type: "t3.medium".into(),
        region: "us-west-2".into(),
        availability_zone: "us-west-2a".into(),
        primary_mac: "02:00:00:00:00:01".into(),
        primary_eni_id: "eni-primary".into(),
        primary_ip: "10.0.0.10".parse().unwrap(),
        subnet_id: "subnet-1".into(),
        subnet_cidr: "10.0.0.0/24".parse().unwrap(),
        vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
        security_groups: vec!["sg-1".into()],
    }
}

fn eni(id: &str, device: u32, primary_ip: &str) -> EniInfo {
    EniInfo {
        id: id.into(),
        mac: format!("02:00:00:00:00:0{}", device + 1),
        device_index: device,
        primary: device == 0,
        primary_ip: primary_ip.parse().unwrap(),
        subnet: "10.0.0.0/24".parse().unwrap(),
    }
}

/// Primary ENI with `primary_ips`, a secondary (device 1) with `secondary_ips`, plus any
/// allocations restored as if found at start-up.
async fn start(primary_ips: &[&str], secondary_ips: &[&str], restored: Vec<Restored>) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let env = BTreeMap::from([
        (
            "AWS_VPC_K8S_CNI_BACKING_STORE",
            dir.path().join("ipam.json").display().to_string(),
        ),
        (
            "IPAMD_SOCKET_PATH",
            dir.path().join("run/ipamd.sock").display().to_string(),
        ),
        ("IP_COOLDOWN_PERIOD", "30".to_string()),
    ]);
    let config = Config::from_lookup(|k| env.get(k).cloned()).unwrap();
    let mut ds = Datastore::new(
        Box::new(JsonFile::new(&config.backing_store)),
        config.ip_cooldown,
        false,
    );
    let now = SystemTime::now();
    ds.add_eni(eni("eni-primary", 0, "10.0.0.10"), now);
    ds.add_cidrs("eni-primary", &nets(primary_ips)).unwrap();
    ds.add_eni(eni("eni-second", 1, "10.0.0.30"), now);
    ds.add_cidrs("eni-second", &nets(secondary_ips)).unwrap();
    assert!(ds.restore(restored, vec![]).is_empty());
    ds.persist().unwrap();

    let limits = Limits {
        max_enis: 3,
        slots_per_eni: 5,
    };
    let node = Arc::new(Node::new(
        config,
        identity(),
        limits,
        Arc::new(Metrics::new()),
        ds,
    ));
    let listener = ipamd::rpc::bind(&node.config.socket_path).unwrap();
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(ipamd::rpc::serve(listener, node.clone(), stop_rx));
    Daemon { dir, node, stop }
}

fn nets(ips: &[&str]) -> Vec<ipnet::Ipv4Net> {
    ips.iter()
        .map(|ip| format!("{ip}/32").parse().unwrap())
        .collect()
}

fn add_req(container: &str, pod: &str) -> AddNetworkRequest {
    AddNetworkRequest {
        network_name: "aws-cni".into(),
        container_id: container.into(),
        if_name: "eth0".into(),
        k8s_pod_namespace: "ns1".into(),
        k8s_pod_name: pod.into(),
        ..Default::default()
    }
}

fn del_req(container: &str, pod: &str) -> DelNetworkRequest {
    DelNetworkRequest {
        network_name: "aws-cni".into(),
        container_id: container.into(),
        if_name: "eth0".into(),
        k8s_pod_namespace: "ns1".into(),
        k8s_pod_name: pod.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn socket_is_private_to_root_and_group() {
    use std::os::unix::fs::PermissionsExt;
    let d = start(&["10.0.0.21"], &[], vec![]).await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&d.socket()), 0o660);
    assert_eq!(mode(d.socket().parent().unwrap()), 0o700);
}

#[tokio::test]
async fn add_is_idempotent_and_on_disk_before_the_reply() {
    let d = start(&["10.0.0.21", "10.0.0.22"], &[], vec![]).await;
    let mut c = d.client().await;
    let reply = c.add_network(add_req("c-aaaa", "pod-a")).await.unwrap();
    assert!(reply.success, "{}", reply.failure_reason);
    let meta = &reply.ip_allocation_metadata[0];
    assert_eq!(
        (
            meta.i_pv4_addr.as_str(),
            meta.device_number,
            meta.route_table_id
        ),
        ("10.0.0.21", 0, 254)
    );
    assert_eq!(reply.eniid, "eni-primary");
    assert_eq!(reply.subnet_cidr, "10.0.0.0/24");
    assert_eq!(reply.vp_cv4_cid_rs, vec!["10.0.0.0/16"]);
    assert_eq!(reply.pod_vlan_id, 0);

    let saved = d.checkpoint();
    assert_eq!(saved.version, "vpc-cni-ipam/1");
    assert_eq!(saved.allocations[0].container_id, "c-aaaa");
    assert_eq!(saved.allocations[0].metadata.pod_name, "pod-a");

    let again = c.add_network(add_req("c-aaaa", "pod-a")).await.unwrap();
    assert_eq!(again.ip_allocation_metadata, reply.ip_allocation_metadata);
    assert_eq!(d.checkpoint().allocations.len(), 1);
}

#[tokio::test]
async fn secondary_eni_addresses_come_with_their_table() {
    let d = start(&[], &["10.0.0.31"], vec![]).await;
    let reply = d
        .client()
        .await
        .add_network(add_req("c-aaaa", "pod-a"))
        .await
        .unwrap();
    let meta = &reply.ip_allocation_metadata[0];
    assert_eq!(
        (
            meta.i_pv4_addr.as_str(),
            meta.device_number,
            meta.route_table_id
        ),
        ("10.0.0.31", 1, 2)
    );
    assert_eq!(reply.eniid, "eni-second");
}

#[tokio::test]
async fn del_releases_into_cooldown_and_unknown_del_is_success() {
    let d = start(&["10.0.0.21", "10.0.0.22"], &[], vec![]).await;
    let mut c = d.client().await;
    c.add_network(add_req("c-aaaa", "pod-a")).await.unwrap();

    let del = c.del_network(del_req("c-aaaa", "pod-a")).await.unwrap();
    assert!(del.success && del.found);
    assert_eq!(del.ip_allocation_metadata[0].i_pv4_addr, "10.0.0.21");
    assert_eq!(
        d.checkpoint().recently_released[0].ipv4.to_string(),
        "10.0.0.21"
    );

    for _ in 0..2 {
        let again = c.del_network(del_req("c-aaaa", "pod-a")).await.unwrap();
        assert!(again.success && !again.found);
    }
    let never = c.del_network(del_req("c-never", "pod-z")).await.unwrap();
    assert!(never.success && !never.found);

    let next = c.add_network(add_req("c-bbbb", "pod-a")).await.unwrap();
    assert_eq!(
        next.ip_allocation_metadata[0].i_pv4_addr, "10.0.0.22",
        "10.0.0.21 is cooling down"
    );
}

#[tokio::test]
async fn status_tracks_free_addresses() {
    let d = start(&["10.0.0.21"], &[], vec![]).await;
    let mut c = d.client().await;
    let s = c.status("aws-cni").await.unwrap();
    assert!(s.ready && s.available_addresses == 1, "{s:?}");
    c.add_network(add_req("c-aaaa", "pod-a")).await.unwrap();
    let s = c.status("aws-cni").await.unwrap();
    assert!(!s.ready, "{s:?}");
    assert!(s.reason.contains("no free address"), "{}", s.reason);
    c.del_network(del_req("c-aaaa", "pod-a")).await.unwrap();
    assert!(
        !c.status("aws-cni").await.unwrap().ready,
        "the only address is cooling down"
    );
}

#[tokio::test]
async fn empty_pool_answers_success_false_after_waiting() {
    let d = start(&[], &[], vec![]).await;
    let started = Instant::now();
    let reply = d
        .client()
        .await
        .add_network(add_req("c-aaaa", "pod-a"))
        .await
        .unwrap();
    assert!(!reply.success);
    assert!(
        reply.failure_reason.contains("no free address"),
        "{}",
        reply.failure_reason
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
}

/// A DEL for a key whose ADD is still waiting for the pool ends that ADD at once.
#[tokio::test]
async fn del_wins_over_a_waiting_add() {
    let d = start(&[], &[], vec![]).await;
    let mut adder = d.client().await;
    let add = tokio::spawn(async move { adder.add_network(add_req("c-aaaa", "pod-a")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let del = d
        .client()
        .await
        .del_network(del_req("c-aaaa", "pod-a"))
        .await
        .unwrap();
    assert!(del.success && !del.found);
    let add = add.await.unwrap().unwrap();
    assert!(!add.success);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(d.checkpoint().allocations.is_empty());
}

#[tokio::test]
async fn other_versions_are_refused() {
    let d = start(&["10.0.0.21"], &[], vec![]).await;
    let path = d.socket();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
    });
    let channel = Endpoint::from_static("http://ipamd")
        .connect_with_connector(connector)
        .await
        .unwrap();
    let mut raw = CniBackendClient::new(channel);
    let req = StatusRequest {
        client_version: "0.0.0-other".into(),
        network_name: "aws-cni".into(),
    };
    let err = raw.status(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message().contains("0.0.0-other")
            && err.message().contains(vpc_cni_proto::CONTRACT_VERSION)
    );
}

fn old_allocation(container: &str, ip: &str, age: Duration) -> Restored {
    Restored {
        key: Key::new("aws-cni", container, "eth0"),
        ip: ip.parse().unwrap(),
        meta: PodMeta {
            namespace: "ns1".into(),
            name: format!("pod-{container}"),
            interfaces_count: 1,
        },
        assigned_at: SystemTime::now() - age,
        host_veth_hash: None,
    }
}

#[tokio::test]
async fn gc_releases_old_invalid_attachments_only() {
    let hour = Duration::from_secs(3600);
    let restored = vec![
        old_allocation("c-valid", "10.0.0.21", hour),
        old_allocation("c-stale", "10.0.0.22", hour),
        old_allocation("c-young", "10.0.0.23", Duration::from_secs(5)),
    ];
    let d = start(&["10.0.0.21", "10.0.0.22", "10.0.0.23"], &[], restored).await;
    let req = GarbageCollectRequest {
        network_name: "aws-cni".into(),
        valid_attachments: vec![Attachment {
            container_id: "c-valid".into(),
            if_name: "eth0".into(),
        }],
        ..Default::default()
    };
    let reply = d.client().await.garbage_collect(req).await.unwrap();
    assert_eq!(reply.released.len(), 1, "{reply:?}");
    let r = &reply.released[0];
    assert_eq!(
        (
            r.container_id.as_str(),
            r.i_pv4_addr.as_str(),
            r.route_table_id
        ),
        ("c-stale", "10.0.0.22", 254)
    );
    assert_eq!(
        (r.pod_namespace.as_str(), r.pod_name.as_str()),
        ("ns1", "pod-c-stale")
    );
    let left: Vec<String> = d
        .checkpoint()
        .allocations
        .iter()
        .map(|a| a.container_id.clone())
        .collect();
    assert_eq!(left, vec!["c-valid", "c-young"]);
}

/// An allocation rebuilt from a host veth has no container id; the pod's DEL finds it by name.
#[tokio::test]
async fn del_by_pod_name_releases_a_rebuilt_allocation() {
    let hash = ipamd::names::pod_hash("ns1", "pod-a");
    let rebuilt = Restored::from_host("10.0.0.21".parse().unwrap(), &hash, SystemTime::now());
    let d = start(&["10.0.0.21"], &[], vec![rebuilt]).await;
    let del = d
        .client()
        .await
        .del_network(del_req("c-from-runtime", "pod-a"))
        .await
        .unwrap();
    assert!(del.success && del.found);
    assert_eq!(del.ip_allocation_metadata[0].i_pv4_addr, "10.0.0.21");
    assert!(d.checkpoint().allocations.is_empty());
}

/// When the checkpoint cannot be written the change is undone and the RPC fails.
#[tokio::test]
async fn failed_checkpoint_write_fails_the_rpc_and_keeps_state() {
    let d = start(&["10.0.0.21"], &[], vec![]).await;
    std::fs::create_dir(d.dir.path().join("ipam.json.tmp")).unwrap();
    let err = d
        .client()
        .await
        .add_network(add_req("c-aaaa", "pod-a"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Internal"), "{err}");
    assert_eq!(d.node.stats().assigned, 0);
    assert!(d.checkpoint().allocations.is_empty());
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let d = start(&["10.0.0.21"], &[], vec![]).await;
    let path = d.socket();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
    });
    let channel = Endpoint::from_static("http://ipamd")
        .connect_with_connector(connector)
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "rpc.CNIBackend"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap();
        assert_eq!(reply.into_inner().status, 1, "{service:?} SERVING");
    }
}
