//! The trunk's VLAN datapath in a User-mode Linux guest, whose kernel makes 802.1Q links (the
//! host's does not). In one boot: vpc-sim on vpc-sgp.json, a trunk and two branch ENIs made
//! through the EC2 API (`vpc-sim ec2`), VLAN links on the node made by hand as the plugin would,
//! and TCP 3306 to the database through each branch: admitted for sg-catalog, refused for a
//! group the database does not admit. Needs root and the Debian package user-mode-linux; fails
//! (never skips) without them.

use std::time::Duration;

use harness::uml;

const SCENARIO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../conf/examples/vpc-sgp.json");
const SIM: &str = env!("CARGO_BIN_EXE_vpc-sim");

/// The guest's script. Each check prints one `CHECK <name> <verdict>` line for the host side.
fn script() -> String {
    let setup = format!(
        r#"set -e
SIM={SIM}
RUN=/run/sim
mkdir -p $RUN
$SIM --scenario {SCENARIO} --run-dir $RUN --netns-prefix g > $RUN/stdout 2> $RUN/log &
SIM_PID=$!
for i in $(seq 1 300); do [ -f $RUN/sim.json ] && break; sleep 0.1; done
[ -f $RUN/sim.json ] || {{ echo "vpc-sim did not start"; cat $RUN/log; exit 1; }}
ec2() {{ $SIM ec2 --sim-json $RUN/sim.json "$@"; }}
NODE=g-i-0c0ffee0000000001
DB=g-i-0d0000000000000db
GW=10.0.32.1
"#
    );
    setup + ENIS + LISTEN + BRANCHES + TEARDOWN
}

/// A trunk on the node at device index 1 and two branches on VLANs 5 (sg-catalog) and 6
/// (sg-node, which the database's group does not name).
const ENIS: &str = r#"
TRUNK=$(ec2 --get networkInterfaceId CreateNetworkInterface SubnetId=subnet-0a11111111111111a \
    SecurityGroupId.1=sg-node InterfaceType=trunk)
ec2 AttachNetworkInterface NetworkInterfaceId=$TRUNK InstanceId=i-0c0ffee0000000001 \
    DeviceIndex=1 > /dev/null
branch() {
    ec2 --get networkInterfaceId --get macAddress --get privateIpAddress \
        CreateNetworkInterface SubnetId=subnet-0a22222222222222b SecurityGroupId.1=$1
}
OUT=$(branch sg-catalog); set -- $OUT; B5=$1 MAC5=$2 IP5=$3
OUT=$(branch sg-node); set -- $OUT; B6=$1 MAC6=$2 IP6=$3
A5=$(ec2 --get associationId AssociateTrunkInterface BranchInterfaceId=$B5 \
    TrunkInterfaceId=$TRUNK VlanId=5)
ec2 AssociateTrunkInterface BranchInterfaceId=$B6 TrunkInterfaceId=$TRUNK VlanId=6 > /dev/null
LINK5=b$(echo $B5 | cut -c5-18)
ip -n g-fabric -d -o link show $LINK5
echo "CHECK sim-warned-no-vlan $(grep -c 'makes no 802.1Q links' $RUN/log || true)"
"#;

const LISTEN: &str = r#"
ip netns exec $DB $SIM tcp-listen --port 3306 > $RUN/listen.out &
LISTEN_PID=$!
for i in $(seq 1 100); do grep -q listening $RUN/listen.out && break; sleep 0.1; done
"#;

/// What the plugin does for a branch pod, reduced to the node side: a VLAN link on the trunk's
/// link with the branch MAC, the branch address on it, and the database routed through it.
const BRANCHES: &str = r#"
ip -n $NODE link set eth1 up
vlan() {
    ip -n $NODE link add link eth1 name vlan.eth.$1 address $2 type vlan id $1
    ip -n $NODE link set vlan.eth.$1 up
    ip -n $NODE addr add $3/32 dev vlan.eth.$1
    ip -n $NODE route replace $GW/32 dev vlan.eth.$1 scope link
    ip -n $NODE route replace 10.0.1.20/32 via $GW dev vlan.eth.$1 src $3
}
connect() {
    if ip netns exec $NODE $SIM tcp-connect 10.0.1.20:3306 --timeout-ms $1; then
        echo admitted; else echo refused; fi
}
vlan 5 $MAC5 $IP5
echo "CHECK vlan5-tcp3306 $(connect 5000)"
ip netns exec $NODE ping -c 1 -W 3 10.0.1.20 > /dev/null && echo "CHECK vlan5-ping ok"
vlan 6 $MAC6 $IP6
echo "CHECK vlan6-tcp3306 $(connect 2000)"
ip netns exec $NODE ping -c 1 -W 3 10.0.1.20 > /dev/null && echo "CHECK vlan6-ping ok"
DB_ENI=$(ec2 --get networkInterfaceId DescribeNetworkInterfaces \
    Filter.1.Name=attachment.instance-id Filter.1.Value.1=i-0d0000000000000db)
DROPS=$(ip netns exec g-fabric iptables-legacy-save -c | grep "in-$DB_ENI denied" | cut -d: -f1)
echo "CHECK db-ingress-drops ${DROPS#[}"

# Disassociating removes the fabric's VLAN link, and the branch's traffic with it.
ec2 DisassociateTrunkInterface AssociationId=$A5 > /dev/null
ip -n g-fabric link show $LINK5 > /dev/null 2>&1 || echo "CHECK vlan5-link gone"
ip -n $NODE route replace $GW/32 dev vlan.eth.5 scope link
ip -n $NODE route replace 10.0.1.20/32 via $GW dev vlan.eth.5 src $IP5
echo "CHECK vlan5-after-disassociate $(connect 2000)"
"#;

const TEARDOWN: &str = r#"
kill $LISTEN_PID
kill -TERM $SIM_PID
wait $SIM_PID && echo "CHECK sim-exit 0"
echo "CHECK netns-left $(ls /run/netns | wc -l)"
"#;

fn check<'a>(output: &'a str, name: &str) -> &'a str {
    let prefix = format!("CHECK {name} ");
    output
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} check in the guest output:\n{output}"))
}

#[test]
fn branches_carry_tcp_through_the_trunk_and_groups_decide() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the UML VLAN suite needs root (the guest runs vpc-sim); run it as root"
    );
    let run = uml::run(&script(), 384, Duration::from_secs(240))
        .unwrap_or_else(|e| panic!("User-mode Linux guest: {e:#}"));
    let out = &run.output;
    // The guest's transcript, shown with --nocapture.
    println!("{out}");
    assert_eq!(run.exit_code, 0, "guest script failed:\n{out}");

    assert!(
        out.contains("vlan protocol 802.1Q id 5"),
        "no fabric VLAN link:\n{out}"
    );
    assert_eq!(check(out, "sim-warned-no-vlan"), "0", "{out}");
    assert_eq!(check(out, "vlan5-tcp3306"), "admitted", "{out}");
    assert_eq!(check(out, "vlan5-ping"), "ok", "{out}");
    // Branch 6 reaches the database (ICMP from the VPC is admitted), but not on 3306.
    assert_eq!(check(out, "vlan6-ping"), "ok", "{out}");
    assert_eq!(check(out, "vlan6-tcp3306"), "refused", "{out}");
    let drops: u64 = check(out, "db-ingress-drops")
        .parse()
        .expect("drop counter");
    assert!(
        drops > 0,
        "the refusal was not the database's group:\n{out}"
    );
    assert_eq!(check(out, "vlan5-link"), "gone", "{out}");
    assert_eq!(check(out, "vlan5-after-disassociate"), "refused", "{out}");
    assert_eq!(check(out, "sim-exit"), "0", "{out}");
    assert_eq!(check(out, "netns-left"), "0", "{out}");
}
