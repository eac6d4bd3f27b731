//! The security-groups-for-pods database scenario (see harness::sgp_scenario), as one
//! program so a User-mode Linux guest can run it: the host kernel has no 802.1Q.
//! Prints one line per check and exits non-zero if any failed.

use std::process::ExitCode;

use harness::kube::ApiServer;
use harness::netns::require_root;
use harness::node::Node;
use harness::sgp_scenario::{init_node, kube_objects, round, Checks, NODE_NAME};

fn main() -> ExitCode {
    require_root();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run()) {
        Ok(checks) if checks.failed.is_empty() => {
            println!("scenario passed");
            ExitCode::SUCCESS
        }
        Ok(checks) => {
            println!("scenario FAILED: {:?}", checks.failed);
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("scenario FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<Checks> {
    let api = ApiServer::start().await?;
    let client = kube_objects(&api).await?;
    let scenario: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../conf/examples/vpc-sgp.json"
    ))?)?;
    let mut checks = Checks::default();
    for mode in ["strict", "standard"] {
        let env = [
            ("ENABLE_POD_ENI", "true"),
            ("POD_SECURITY_GROUP_ENFORCING_MODE", mode),
            ("MY_NODE_NAME", NODE_NAME),
            ("VPC_CNI_BRANCH_COOLDOWN_SECONDS", "0"),
        ];
        // ipamd reaches the API server through a relay into the node's namespace.
        let node = tokio::task::block_in_place(|| Node::start_with_kube(&scenario, &env, &api))?;
        init_node(&node, mode, &mut checks)?;
        let result = round(&node, &client, mode, &mut checks).await;
        if let Err(e) = &result {
            println!("ipamd log:\n{}", node.ipamd.log_tail(40));
            checks.check(format!("{mode}: round ran to the end: {e:#}"), false);
        }
        tokio::task::block_in_place(|| drop(node));
    }
    Ok(checks)
}
