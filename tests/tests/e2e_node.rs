//! The node end to end: vpc-sim, ipamd in the node's namespace, the plugin run as containerd
//! runs it. Needs root.

use harness::demo::{demo_scenario, run_node};
use harness::netns::{self, require_root};
use harness::vpc::Vpc;

#[test]
fn ten_pods_get_distinct_vpc_addresses_reach_each_other_and_leave_nothing() {
    require_root();
    let vpc = Vpc::start(&demo_scenario().unwrap()).unwrap();
    let fabric = vpc.info.fabric_netns.clone();
    let report = run_node(&vpc, 10).unwrap();
    println!("{}", report.table());
    assert!(
        report.failures.is_empty(),
        "failed checks: {:#?}",
        report.failures
    );
    assert_eq!(report.pods.len(), 10);
    // Ten pods do not fit on the primary ENI of an m5.large (9 secondary addresses), so the
    // scenario also proves pods on a secondary ENI (table device + 1) reach everything.
    assert!(
        report.pods.iter().any(|p| p.table != "main"),
        "expected some pods on a secondary ENI: {}",
        report.table()
    );
    vpc.stop().unwrap();
    let prefix = fabric.trim_end_matches("-fabric");
    let left: Vec<String> = netns::list()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    assert!(left.is_empty(), "vpc-sim left namespaces behind: {left:?}");
}
