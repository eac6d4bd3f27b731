//! `make demo`: a local VPC, one node running ipamd, ten pods wired by the plugin exactly as
//! containerd runs it, reachability proved with ping, then everything deleted and checked.

use std::process::ExitCode;

use harness::demo::{demo_scenario, run_node};
use harness::netns::{require_root, RootSnapshot};
use harness::vpc::Vpc;

fn main() -> ExitCode {
    require_root();
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<bool> {
    let before = RootSnapshot::take()?;
    println!("starting the local VPC (conf/examples/vpc-demo.json)");
    let vpc = Vpc::start(&demo_scenario()?)?;
    let node = vpc.node();
    println!(
        "node {} ({}) in namespace {}, primary ENI {} {}",
        node.id, node.instance_type, node.netns, node.primary_mac, node.primary_ip
    );

    let report = run_node(&vpc, 10)?;
    println!("\n{}", report.table());
    for (what, ok) in &report.checks {
        println!("{} {what}", if *ok { "ok  " } else { "FAIL" });
    }
    vpc.stop()?;

    let leftovers = before.added_in(&RootSnapshot::take()?);
    for l in &leftovers {
        println!("FAIL root namespace kept {l}");
    }
    if leftovers.is_empty() {
        println!("ok   root namespace holds nothing the demo created");
    }
    let sgp_passed = security_groups_for_pods()?;
    let passed = report.failures.is_empty() && leftovers.is_empty() && sgp_passed;
    println!("\ndemo {}", if passed { "passed" } else { "FAILED" });
    Ok(passed)
}

/// The database scenario of security groups for pods: a catalog pod matched by a
/// SecurityGroupPolicy reaches the database through its branch ENI, another pod is refused.
/// This kernel has no 802.1Q, so it runs in a User-mode Linux guest with its own API server.
fn security_groups_for_pods() -> anyhow::Result<bool> {
    println!(
        "
security groups for pods (conf/examples/vpc-sgp.json), in a User-mode Linux guest"
    );
    let script = format!(
        "export KUBE_READY_TIMEOUT_SECONDS=300 HARNESS_TIMEOUT_SCALE=4\nexec {}\n",
        harness::bins::path("vpc-sgp-scenario").display()
    );
    let run = harness::uml::run(&script, 1024, std::time::Duration::from_secs(900))?;
    print!("{}", run.output);
    Ok(run.exit_code == 0)
}
