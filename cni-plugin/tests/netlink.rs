//! The netlink layer against a real kernel, inside namespaces the tests create.

mod common;

use std::sync::Arc;

use common::{rules_with_priority, TestNetns};
use vpc_cni::netlink::{MacAddr, Netlink, Netns, NetnsError, Route, Rule, VethPair, RT_TABLE_MAIN};

fn open(ns: &TestNetns) -> (Arc<Netns>, Netlink) {
    let netns = Arc::new(Netns::named(&ns.name).expect("open test netns"));
    let nl = Netlink::in_netns(netns.clone()).expect("netlink socket in test netns");
    (netns, nl)
}

#[tokio::test]
async fn veth_pair_lands_with_peer_in_other_namespace() {
    let (a, b) = (TestNetns::new("nl-a"), TestNetns::new("nl-b"));
    let (_, nla) = open(&a);
    let (netns_b, nlb) = open(&b);
    let mac: MacAddr = "02:11:22:33:44:55".parse().unwrap();

    let pair = VethPair {
        name: "vx0",
        mac: Some(mac),
        mtu: 1400,
        peer_name: "px0",
        peer_netns: &netns_b,
    };
    nla.create_veth(&pair).await.unwrap();

    let host = nla.link_by_name("vx0").await.unwrap().expect("host end");
    assert_eq!(host.mac, Some(mac));
    assert_eq!(host.mtu, 1400);
    assert_eq!(host.kind.as_deref(), Some("veth"));
    assert!(!host.up);
    let peer = nlb
        .link_by_name("px0")
        .await
        .unwrap()
        .expect("peer end in other netns");
    assert_eq!(peer.mtu, 1400);
    assert!(nla.link_by_name("px0").await.unwrap().is_none());
    assert_eq!(
        nla.link_by_mac(mac).await.unwrap().map(|l| l.index),
        Some(host.index)
    );
    assert_eq!(
        nla.link_by_index(host.index).await.unwrap().unwrap().name,
        "vx0"
    );

    // A second create with the same name is refused with EEXIST, not silently accepted.
    let err = nla.create_veth(&pair).await.unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(
        err.to_string()
            .contains("create veth vx0 (peer px0): file exists"),
        "{err}"
    );

    nla.set_link_up(host.index).await.unwrap();
    nla.set_link_mtu(host.index, 1300).await.unwrap();
    let json = a.link("vx0").unwrap();
    assert!(
        json["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{json}"
    );
    assert_eq!(json["mtu"], 1300);

    assert!(nla.delete_link_by_name("vx0").await.unwrap());
    assert!(a.link("vx0").is_none());
    assert!(b.link("px0").is_none(), "deleting one end removes the pair");
    assert!(!nla.delete_link_by_name("vx0").await.unwrap());
    assert!(!nla.delete_link(host.index).await.unwrap());
}

#[tokio::test]
async fn addresses_routes_and_neighbours_in_a_table() {
    let (a, b) = (TestNetns::new("nl-r"), TestNetns::new("nl-rp"));
    let (_, nl) = open(&a);
    let (netns_b, _) = open(&b);
    let pair = VethPair {
        name: "vr0",
        mac: None,
        mtu: 1500,
        peer_name: "pr0",
        peer_netns: &netns_b,
    };
    nl.create_veth(&pair).await.unwrap();
    let idx = nl.link_by_name("vr0").await.unwrap().unwrap().index;
    nl.set_link_up(idx).await.unwrap();

    let addr = "10.9.0.2/24".parse().unwrap();
    nl.add_address(idx, addr).await.unwrap();
    nl.add_address(idx, addr)
        .await
        .expect("same address twice is fine");
    let listed = nl.addresses_of(idx).await.unwrap();
    assert!(listed.iter().any(|x| x.address == addr), "{listed:?}");

    let gw_route = Route::link_scope("10.9.0.1/32".parse().unwrap(), idx, 7);
    let default = Route::via(
        "0.0.0.0/0".parse().unwrap(),
        "10.9.0.1".parse().unwrap(),
        idx,
        7,
    );
    nl.replace_route(&gw_route).await.unwrap();
    nl.replace_route(&default).await.unwrap();
    nl.replace_route(&default)
        .await
        .expect("replace is idempotent");
    assert!(nl.add_route(&default).await.unwrap_err().is_exists());
    let json = a.routes("7");
    assert_eq!(json.len(), 2, "{json:?}");
    assert!(json
        .iter()
        .any(|r| r["dst"] == "default" && r["gateway"] == "10.9.0.1"));
    assert!(json
        .iter()
        .any(|r| r["dst"] == "10.9.0.1" && r["scope"] == "link"));
    let ours = nl.routes_in_table(7, false).await.unwrap();
    assert!(ours
        .iter()
        .any(|r| r.is_default() && r.gateway == default.gateway && r.oif == Some(idx)));

    let mac: MacAddr = "02:aa:bb:cc:dd:ee".parse().unwrap();
    let gw = "10.9.0.1".parse().unwrap();
    nl.replace_permanent_neighbour(idx, gw, mac).await.unwrap();
    let neigh = a.ip_json(&["neigh", "show", "dev", "vr0"]);
    assert_eq!(neigh[0]["lladdr"], "02:aa:bb:cc:dd:ee", "{neigh}");
    assert_eq!(neigh[0]["state"][0], "PERMANENT", "{neigh}");
    assert!(nl.delete_neighbour(idx, gw).await.unwrap());
    assert!(!nl.delete_neighbour(idx, gw).await.unwrap());

    assert!(nl.delete_route(&default).await.unwrap());
    assert!(!nl.delete_route(&default).await.unwrap());
    assert!(nl.delete_address(idx, addr).await.unwrap());
    assert!(!nl.delete_address(idx, addr).await.unwrap());
    assert!(!nl
        .routes_in_table(RT_TABLE_MAIN, false)
        .await
        .unwrap()
        .iter()
        .any(|r| r.oif == Some(idx) && r.destination == "10.9.0.0/24".parse().unwrap()));
}

#[tokio::test]
async fn rules_are_not_duplicated_and_delete_all_copies() {
    let ns = TestNetns::new("nl-rule");
    let (_, nl) = open(&ns);
    let to = Rule::to("10.0.0.21/32".parse().unwrap(), RT_TABLE_MAIN).priority(512);
    let from = Rule::from("10.0.0.21/32".parse().unwrap(), 3).priority(1536);
    nl.add_rule(&to).await.unwrap();
    nl.add_rule(&to).await.unwrap();
    nl.add_rule(&from).await.unwrap();
    let big = Rule::from("10.0.0.22/32".parse().unwrap(), 10002).priority(1536);
    nl.add_rule(&big).await.unwrap();

    let rules = ns.rules();
    assert_eq!(rules_with_priority(&rules, 512).len(), 1, "{rules:?}");
    assert_eq!(rules_with_priority(&rules, 512)[0]["dst"], "10.0.0.21");
    assert_eq!(rules_with_priority(&rules, 1536).len(), 2);
    let listed = nl.rules(false).await.unwrap();
    assert!(listed.contains(&to), "{listed:?}");
    assert!(listed
        .iter()
        .any(|r| r.table == 10002 && r.priority == Some(1536)));

    // A copy in another table, as an older release might have left, goes too.
    ns.ip(&[
        "rule",
        "add",
        "from",
        "10.0.0.21",
        "lookup",
        "4",
        "prio",
        "1536",
    ]);
    let any_table = Rule {
        table: 0,
        ..from.clone()
    };
    assert_eq!(nl.delete_rules(&any_table).await.unwrap(), 2);
    assert!(nl.delete_rule(&to).await.unwrap());
    assert!(!nl.delete_rule(&to).await.unwrap());
    let left = ns.rules();
    assert_eq!(rules_with_priority(&left, 512).len(), 0);
    assert_eq!(
        rules_with_priority(&left, 1536).len(),
        1,
        "only the other address's rule stays"
    );
}

#[tokio::test]
async fn iif_rules_round_trip() {
    let ns = TestNetns::new("nl-iif");
    let (_, nl) = open(&ns);
    let rule = Rule::iif("vlan.eth.3", 103, false).priority(10);
    nl.add_rule(&rule).await.unwrap();
    let json = rules_with_priority(&ns.rules(), 10);
    assert_eq!(json[0]["iif"], "vlan.eth.3", "{json:?}");
    assert_eq!(json[0]["table"], "103");
    assert_eq!(
        nl.delete_rules(&Rule { iif: None, ..rule }).await.unwrap(),
        1
    );
}

#[test]
fn netns_open_tells_missing_from_unmounted() {
    let missing = Netns::open("/var/run/netns/vcni-does-not-exist").unwrap_err();
    assert!(matches!(missing, NetnsError::NotFound(_)) && missing.is_gone());
    let plain = tempfile::NamedTempFile::new().unwrap();
    let unmounted = Netns::open(plain.path()).unwrap_err();
    assert!(
        matches!(unmounted, NetnsError::NotNetns(_)) && unmounted.is_gone(),
        "{unmounted}"
    );
}

#[test]
fn running_in_a_namespace_leaves_the_caller_where_it_was() {
    let ns = TestNetns::new("nl-run");
    let target = Netns::named(&ns.name).unwrap();
    let before = Netns::current().unwrap();
    let inside = target.run(|| Netns::current().unwrap()).unwrap();
    assert!(inside.same_as(&target).unwrap());
    assert!(!inside.same_as(&before).unwrap());
    assert!(Netns::current().unwrap().same_as(&before).unwrap());
}

#[test]
fn running_here_switches_this_thread_and_back() {
    let ns = TestNetns::new("nl-here");
    let target = Netns::named(&ns.name).unwrap();
    let before = Netns::current().unwrap();
    let inside = target.run_here(|| Netns::current().unwrap()).unwrap();
    assert!(inside.same_as(&target).unwrap());
    assert!(Netns::current().unwrap().same_as(&before).unwrap());
}

#[test]
fn socket_needs_a_runtime() {
    let ns = TestNetns::new("nl-rt");
    let netns = Arc::new(Netns::named(&ns.name).unwrap());
    assert!(matches!(
        Netlink::in_netns(netns),
        Err(vpc_cni::netlink::NetlinkError::NoRuntime)
    ));
}

fn assert_send<T: Send>(_: &T) {}

/// ipamd drives these from a multi-threaded runtime, where spawned futures must be Send.
#[tokio::test]
async fn futures_can_move_between_threads() {
    let ns = TestNetns::new("nl-send");
    let (netns, nl) = open(&ns);
    let rule = Rule::default();
    let route = Route::link_scope("10.0.0.1/32".parse().unwrap(), 1, 2);
    assert_send(&nl.links());
    assert_send(&nl.link_by_mac("02:00:00:00:00:01".parse().unwrap()));
    assert_send(&nl.add_rule(&rule));
    assert_send(&nl.delete_rules(&rule));
    assert_send(&nl.replace_route(&route));
    assert_send(&nl.routes_in_table(2, false));
    assert_send(&nl.addresses());
    assert_send(&nl.neighbours(false));
    assert_send(&nl.set_link_netns(1, &netns));
    fn shared<T: Send + Sync>(_: &T) {}
    shared(&nl);
}
