//! A node where ipamd cannot start stays NotReady (no conflist is written) and says why: in
//! ipamd's log and as a Warning event on the Node. Needs the kube-apiserver that
//! tests/kube/build-apiserver.sh builds.

use std::process::Command;

use harness::bins;
use harness::kube::ApiServer;
use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

#[tokio::test]
async fn ipamd_that_cannot_start_records_why_on_the_node() {
    let api = ApiServer::start().await.unwrap();
    let client = api.client().await.unwrap();
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "node-broken"}})).unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let conf_dir = dir.path().join("net.d");
    std::fs::create_dir_all(&conf_dir).unwrap();
    // Nothing listens on this loopback port: the instance metadata service is unreachable.
    let out = tokio::task::spawn_blocking({
        let (kubeconfig, dir, conf_dir) = (
            api.kubeconfig.clone(),
            dir.path().to_path_buf(),
            conf_dir.clone(),
        );
        move || {
            Command::new(bins::path("ipamd"))
                .env_clear()
                .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
                .env("AWS_ACCESS_KEY_ID", "x")
                .env("AWS_SECRET_ACCESS_KEY", "y")
                .env("MY_NODE_NAME", "node-broken")
                .env("KUBECONFIG", &kubeconfig)
                .env("IPAMD_SOCKET_PATH", dir.join("ipamd.sock"))
                .env("AWS_VPC_K8S_CNI_BACKING_STORE", dir.join("ipam.json"))
                .env("AWS_VPC_K8S_CNI_LOG_FILE", "stderr")
                .env("HOST_CNI_CONFDIR_PATH", &conf_dir)
                .env("DISABLE_INTROSPECTION", "true")
                .env("DISABLE_METRICS", "true")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        !out.status.success(),
        "ipamd started without instance metadata"
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("instance metadata"),
        "the log does not say why: {log}"
    );
    assert_eq!(
        std::fs::read_dir(&conf_dir).unwrap().count(),
        0,
        "conflist written"
    );

    let events: Api<Event> = Api::namespaced(client, "default");
    let list = events
        .list(&ListParams::default().fields("involvedObject.name=node-broken"))
        .await
        .unwrap();
    let reasons: Vec<String> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
    assert!(
        reasons.iter().any(|r| r == "IpamdStartFailed"),
        "events: {reasons:?}"
    );
}
