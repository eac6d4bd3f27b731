//! The second kernel the VLAN suites rely on: it boots, and it has what the host kernel lacks.
//! Needs the Debian package user-mode-linux; fails (never skips) without it.

use std::time::Duration;

use harness::uml;

#[test]
fn guest_kernel_creates_8021q_links_and_runs_iptables_legacy() {
    let script = "set -e\n\
        ip link add t0 type veth peer name t1\n\
        ip link add link t0 name vlan.eth.7 type vlan id 7\n\
        ip -d -o link show vlan.eth.7\n\
        iptables-legacy -A FORWARD -p tcp --dport 3306 -j ACCEPT\n";
    let run = uml::run(script, 256, Duration::from_secs(120)).unwrap();
    assert_eq!(run.exit_code, 0, "guest script failed:\n{}", run.output);
    assert!(
        run.output.contains("vlan protocol 802.1Q id 7"),
        "{}",
        run.output
    );
}
