//! Security groups for pods end to end, in a second kernel: the host kernel here has no
//! 802.1Q, so one User-mode Linux guest runs etcd, kube-apiserver, vpc-sim, ipamd and the
//! plugin (the host's binaries, through the guest's read-only view of the host's root) and
//! the database scenario in strict and standard mode. Needs root, user-mode-linux and the
//! kube-apiserver that tests/kube/build-apiserver.sh builds; fails when any is missing.

use std::time::Duration;

use harness::{bins, uml};

#[test]
fn database_admits_the_catalog_pod_and_refuses_the_other_in_both_modes() {
    let scenario = bins::path("vpc-sgp-scenario");
    let script = format!(
        "export KUBE_READY_TIMEOUT_SECONDS=300 HARNESS_TIMEOUT_SCALE=4 RUST_BACKTRACE=1\n\
         ip link set lo up\n\
         exec {}\n",
        scenario.display()
    );
    let run = uml::run(&script, 1024, Duration::from_secs(900)).unwrap();
    println!("{}", run.output);
    assert_eq!(
        run.exit_code, 0,
        "scenario failed in the guest:\n{}",
        run.output
    );
    assert!(run.output.contains("scenario passed"), "{}", run.output);
}
