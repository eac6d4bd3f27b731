//! Failures users met in the field with aws-node, replayed against the whole node: vpc-sim,
//! ipamd in the node's namespace and the plugin binary. Each test names the case it covers in
//! shared terms (what the runtime did, what must hold). Needs root.

use std::time::Duration;

use harness::netns::require_root;
use harness::node::{host_veth, result_ip, Node};
use harness::plugin::Pod;

fn assert_host_clean(node: &Node, ip: &str, veth: &str) {
    assert!(
        node.rules_for(ip).is_empty(),
        "rules for {ip} left: {:?}",
        node.rules_for(ip)
    );
    assert!(
        node.routes_to(ip).is_empty(),
        "routes to {ip} left: {:?}",
        node.routes_to(ip)
    );
    assert!(!node.has_link(veth), "host veth {veth} left");
}

fn assert_released(node: &Node, ip: &str) {
    let assigned = node.ipamd.assigned_ips().unwrap();
    assert!(
        !assigned.contains(&ip.to_string()),
        "{ip} still assigned: {assigned:?}"
    );
}

/// The sandbox died first (its namespace is gone) and the runtime sends DEL with an empty
/// CNI_NETNS: the address must still be released and the host side removed.
#[test]
fn del_with_empty_netns_releases_the_address() {
    require_root();
    let node = Node::start(&[]).unwrap();
    for with_prev in [true, false] {
        let p = node
            .pod(&format!("gone-{with_prev}"), &format!("c-gone-{with_prev}"))
            .unwrap();
        let result = node.add(&p.pod);
        let (ip, veth) = (result_ip(&result), host_veth(&result));
        drop(p.ns);
        let pod = Pod {
            netns: String::new(),
            ..p.pod
        };
        let out = if with_prev {
            node.cni_prev("DEL", &pod, &result).unwrap()
        } else {
            node.cni("DEL", &pod).unwrap()
        };
        assert!(out.ok(), "DEL with empty netns failed: {}", out.stdout);
        assert_released(&node, &ip);
        assert_host_clean(&node, &ip, &veth);
    }
}

/// CNI_NETNS names a namespace that no longer exists: only the in-namespace steps are skipped.
#[test]
fn del_with_dangling_netns_path_cleans_the_host() {
    require_root();
    let node = Node::start(&[]).unwrap();
    let p = node.pod("dangling", "c-dangling").unwrap();
    let result = node.add(&p.pod);
    let (ip, veth) = (result_ip(&result), host_veth(&result));
    let pod = p.pod.clone();
    drop(p.ns);
    let out = node.cni_prev("DEL", &pod, &result).unwrap();
    assert!(
        out.ok(),
        "DEL with a dangling netns path failed: {}",
        out.stdout
    );
    assert_released(&node, &ip);
    assert_host_clean(&node, &ip, &veth);
}

/// ipamd is down during DEL (a rollout): DEL succeeds from prevResult, and ipamd frees the
/// address once it is back because the pod's veth is gone.
#[test]
fn del_while_ipamd_is_down_succeeds_and_ipamd_reclaims_later() {
    require_root();
    let mut node = Node::start(&[]).unwrap();
    let p = node.pod("downdel", "c-downdel").unwrap();
    let result = node.add(&p.pod);
    let (ip, veth) = (result_ip(&result), host_veth(&result));
    node.ipamd.stop();

    let out = node.cni_prev("DEL", &p.pod, &result).unwrap();
    assert!(out.ok(), "DEL with ipamd down failed: {}", out.stdout);
    assert!(
        node.rules_for(&ip).is_empty(),
        "rules left after DEL: {:?}",
        node.rules_for(&ip)
    );
    let out = node.cni("DEL", &p.pod).unwrap();
    assert!(
        out.ok(),
        "DEL without prevResult and ipamd down failed: {}",
        out.stdout
    );
    drop(p.ns);

    node.ipamd.restart().unwrap();
    assert_released(&node, &ip);
    assert_host_clean(&node, &ip, &veth);
}

/// ipamd restarts in the middle of deletions of pods on a secondary ENI: no rule, route or
/// neighbour entry keeps referring to the address afterwards.
#[test]
fn no_rules_leak_when_ipamd_restarts_during_deletions() {
    require_root();
    let mut node = Node::start(&[]).unwrap();
    let mut pods = Vec::new();
    for i in 0..10 {
        let p = node.pod(&format!("sec{i}"), &format!("c-sec{i}")).unwrap();
        let r = node.add(&p.pod);
        pods.push((p, r));
    }
    // The pod whose address needs a from-rule (it lives on a secondary ENI).
    let idx = pods
        .iter()
        .position(|(_, r)| {
            node.rules_for(&result_ip(r))
                .iter()
                .any(|x| x["priority"] == 1536)
        })
        .expect("a pod on a secondary ENI");
    let (p, result) = pods.remove(idx);
    let ip = result_ip(&result);
    node.ipamd.stop();
    let _ = node.cni_prev("DEL", &p.pod, &result).unwrap();
    drop(p.ns);
    node.ipamd.restart().unwrap();
    assert!(
        node.rules_for(&ip).is_empty(),
        "rules for {ip} left: {:?}",
        node.rules_for(&ip)
    );
    assert_released(&node, &ip);
}

/// DEL for a container ipamd never saw, repeated DELs, and an ADD that failed while ipamd was
/// down followed by the runtime's retry.
#[test]
fn del_is_idempotent_and_add_retry_after_ipamd_outage_works() {
    require_root();
    let mut node = Node::start(&[]).unwrap();
    node.ipamd.stop();
    let first = node.pod("retry", "c-aaaa").unwrap();
    let out = node.cni("ADD", &first.pod).unwrap();
    assert_eq!(out.code, 1, "ADD with ipamd down must fail");
    assert_eq!(
        out.json()["code"],
        11,
        "ipamd down is 'try again later': {}",
        out.stdout
    );
    node.ipamd.restart().unwrap();

    assert!(
        node.cni("DEL", &first.pod).unwrap().ok(),
        "DEL of a never-added container"
    );
    let second = Pod {
        container_id: "c-bbbb".into(),
        ..first.pod.clone()
    };
    node.add(&second);
    assert_eq!(node.ipamd.assigned_ips().unwrap().len(), 1);
    for pod in [&second, &second, &first.pod] {
        let out = node.cni("DEL", pod).unwrap();
        assert!(out.ok(), "DEL {} failed: {}", pod.container_id, out.stdout);
    }
    assert!(node.ipamd.assigned_ips().unwrap().is_empty());
}

/// Wiring fails after ipamd assigned an address (the pod namespace already has an eth0): ADD
/// fails, gives the address back and leaves no host state.
#[test]
fn failed_add_gives_the_address_back() {
    require_root();
    let node = Node::start(&[]).unwrap();
    let p = node.pod("clash", "c-clash").unwrap();
    p.ns.exec_ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ])
    .unwrap();
    let out = node.cni("ADD", &p.pod).unwrap();
    assert_ne!(
        out.code, 0,
        "ADD into a namespace that already has eth0 must fail"
    );
    assert!(
        out.json()["msg"].as_str().is_some(),
        "a CNI error object: {}",
        out.stdout
    );
    assert!(
        node.ipamd.assigned_ips().unwrap().is_empty(),
        "address kept after a failed ADD"
    );
    let veth = harness::plugin::host_veth_name("eni", "default", "clash");
    assert!(!node.has_link(&veth), "host veth left after a failed ADD");
}

/// ipamd restarts right after pods were deleted: addresses of live pods and addresses still
/// cooling down are never handed to new pods.
#[test]
fn restart_never_hands_out_live_or_cooling_addresses() {
    require_root();
    let mut node = Node::start(&[("IP_COOLDOWN_PERIOD", "30")]).unwrap();
    let a = node.pod("live", "c-live").unwrap();
    let b = node.pod("leaving", "c-leaving").unwrap();
    let ra = node.add(&a.pod);
    let rb = node.add(&b.pod);
    assert!(node.cni_prev("DEL", &b.pod, &rb).unwrap().ok());
    node.ipamd.restart().unwrap();

    let taken = [result_ip(&ra), result_ip(&rb)];
    let mut fresh = Vec::new();
    for i in 0..8 {
        let p = node.pod(&format!("new{i}"), &format!("c-new{i}")).unwrap();
        let r = node.add(&p.pod);
        assert!(
            !taken.contains(&result_ip(&r)),
            "{} handed out twice",
            result_ip(&r)
        );
        fresh.push(p);
    }
}

/// The checkpoint is corrupt, truncated or missing: ipamd keeps it aside, rebuilds from the
/// host, and never hands out an address a running pod holds.
#[test]
fn corrupt_or_missing_checkpoint_never_causes_duplicate_addresses() {
    require_root();
    let mut node = Node::start(&[]).unwrap();
    let a = node.pod("keep-a", "c-keep-a").unwrap();
    let b = node.pod("keep-b", "c-keep-b").unwrap();
    let live = [result_ip(&node.add(&a.pod)), result_ip(&node.add(&b.pod))];

    type Damage = fn(&std::path::Path);
    let damages: [(&str, Damage); 3] = [
        ("half", |p| {
            let text = std::fs::read(p).unwrap();
            std::fs::write(p, &text[..text.len() / 2]).unwrap();
        }),
        ("empty", |p| std::fs::write(p, b"").unwrap()),
        ("deleted", |p| std::fs::remove_file(p).unwrap()),
    ];
    for (what, damage) in damages {
        node.ipamd.stop();
        damage(&node.ipamd.checkpoint);
        node.ipamd.restart().unwrap();
        let assigned = node.ipamd.assigned_ips().unwrap();
        for ip in &live {
            assert!(
                assigned.contains(ip),
                "{what}: live pod address {ip} not held: {assigned:?}"
            );
        }
        let p = node
            .pod(&format!("after-{what}"), &format!("c-after-{what}"))
            .unwrap();
        let r = node.add(&p.pod);
        assert!(
            !live.contains(&result_ip(&r)),
            "{what}: {} handed out twice",
            result_ip(&r)
        );
        assert!(node.cni_prev("DEL", &p.pod, &r).unwrap().ok());
    }
    let dir = node.ipamd.checkpoint.parent().unwrap();
    let kept = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("corrupt"))
        .count();
    assert!(kept >= 1, "the unreadable checkpoint was not kept aside");
}

/// The checkpoint is older than the node (a pod was deleted while another ipamd build ran):
/// the stale entry is dropped on start, the live one kept.
#[test]
fn stale_checkpoint_entries_are_validated_against_the_host() {
    require_root();
    let mut node = Node::start(&[]).unwrap();
    let a = node.pod("stay", "c-stay").unwrap();
    let b = node.pod("went", "c-went").unwrap();
    let ra = node.add(&a.pod);
    let rb = node.add(&b.pod);
    node.ipamd.stop();
    // The pod is torn down while ipamd is away; the checkpoint still lists it.
    assert!(node.cni_prev("DEL", &b.pod, &rb).unwrap().ok());
    drop(b.ns);
    node.ipamd.restart().unwrap();
    let assigned = node.ipamd.assigned_ips().unwrap();
    assert!(
        assigned.contains(&result_ip(&ra)),
        "live pod dropped: {assigned:?}"
    );
    assert!(
        !assigned.contains(&result_ip(&rb)),
        "deleted pod kept: {assigned:?}"
    );
}

/// ipamd dies after EC2 attached a new ENI but before it recorded it: after the restart the
/// ENI is adopted, not leaked, and ipamd's totals match EC2's.
#[test]
fn eni_attached_before_a_crash_is_adopted() {
    require_root();
    let mut node = Node::start(&[]).unwrap();
    let enis_before = node.ipamd.eni_ids().unwrap();
    node.vpc
        .inject_fault(
            &serde_json::json!({"action": "ModifyNetworkInterfaceAttribute", "delayMs": 10000, "times": 1}),
        )
        .unwrap();
    // One pod makes the pool short of a whole ENI's worth of free addresses, so ipamd grows.
    let p = node.pod("grow", "c-grow").unwrap();
    node.add(&p.pod);
    harness::process::wait_for(
        "ipamd to attach the ENI and ask for delete-on-termination",
        Duration::from_secs(20),
        || {
            let calls = node.vpc.calls().ok()?;
            (calls["ModifyNetworkInterfaceAttribute"]
                .as_i64()
                .unwrap_or(0)
                > 0)
            .then_some(())
        },
    )
    .unwrap();
    // EC2 has attached the ENI; ipamd dies while the follow-up call is still in flight.
    node.ipamd.crash();
    node.ipamd.restart().unwrap();

    let attached = node.vpc.attached_eni_ids(&node.instance.id).unwrap();
    assert!(
        attached.len() > enis_before.len(),
        "the ENI was not attached: {attached:?}"
    );
    harness::process::wait_for(
        "ipamd to adopt the attached ENI",
        Duration::from_secs(20),
        || {
            let known = node.ipamd.eni_ids().ok()?;
            attached.iter().all(|e| known.contains(e)).then_some(())
        },
    )
    .unwrap();
}

/// The runtime replaced a pod's sandbox (same pod, new container) and the old sandbox's DEL
/// arrives afterwards: the host veth name is the pod's, so it now belongs to the new
/// sandbox, which must keep its link, route, rule and address.
#[test]
fn del_of_an_older_sandbox_leaves_the_newer_one_alone() {
    require_root();
    let node = Node::start(&[]).unwrap();
    let old = node.pod("web", "c-old").unwrap();
    let old_result = node.add(&old.pod);
    let new_ns = harness::netns::Netns::new("web-new").unwrap();
    let new_pod = Pod {
        container_id: "c-new".into(),
        netns: new_ns.path(),
        ..old.pod.clone()
    };
    let new_result = node.add(&new_pod);
    let (new_ip, veth) = (result_ip(&new_result), host_veth(&new_result));

    let out = node.cni_prev("DEL", &old.pod, &old_result).unwrap();
    assert!(out.ok(), "DEL of the old sandbox failed: {}", out.stdout);
    assert!(
        node.has_link(&veth),
        "the new sandbox lost its host veth {veth}"
    );
    assert!(
        !node.routes_to(&new_ip).is_empty(),
        "the new sandbox lost its route"
    );
    assert!(
        !node.rules_for(&new_ip).is_empty(),
        "the new sandbox lost its rule"
    );
    assert!(node.ipamd.assigned_ips().unwrap().contains(&new_ip));
    assert_released(&node, &result_ip(&old_result));
    let check = node.cni_prev("CHECK", &new_pod, &new_result).unwrap();
    assert!(
        check.ok(),
        "the new sandbox no longer checks: {}",
        check.stdout
    );
}

/// A DEL for a container ipamd never saw, carrying another pod's result as prevResult, must
/// not tear that pod down: ipamd's "no allocation" outranks the prevResult.
#[test]
fn del_with_another_pods_result_touches_nothing() {
    require_root();
    let node = Node::start(&[]).unwrap();
    let victim = node.pod("victim", "c-victim").unwrap();
    let result = node.add(&victim.pod);
    let (ip, veth) = (result_ip(&result), host_veth(&result));
    let stranger = Pod {
        container_id: "c-stranger".into(),
        name: "stranger".into(),
        netns: String::new(),
        ..victim.pod.clone()
    };
    let out = node.cni_prev("DEL", &stranger, &result).unwrap();
    assert!(
        out.ok(),
        "DEL of an unknown container must succeed: {}",
        out.stdout
    );
    assert!(node.has_link(&veth), "the victim lost its host veth");
    assert!(!node.rules_for(&ip).is_empty(), "the victim lost its rules");
    assert!(node.ipamd.assigned_ips().unwrap().contains(&ip));
}

/// ENIs of this node in EC2 that are attached nowhere.
fn unattached_enis(node: &Node) -> Vec<String> {
    let state = node.vpc.state().unwrap();
    let description = format!("aws-K8S-{}", node.instance.id);
    state["enis"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["description"] == description.as_str() && e["attachment"].is_null())
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// An ENI whose attach failed and whose clean-up failed too stays in EC2 with the node's
/// tags, costing a subnet address forever; the periodic sweep deletes it on its second
/// sighting and leaves the node's attached ENIs alone.
#[test]
fn an_eni_left_unattached_is_swept_away() {
    require_root();
    let node = Node::start(&[("VPC_CNI_LEAK_SWEEP_SECONDS", "2")]).unwrap();
    let enis_before = node.ipamd.eni_ids().unwrap();
    for fault in [
        serde_json::json!({"action": "AttachNetworkInterface", "error": "InvalidParameterValue",
                           "message": "attach refused"}),
        serde_json::json!({"action": "DeleteNetworkInterface", "error": "UnauthorizedOperation",
                           "message": "not authorized to delete"}),
    ] {
        node.vpc.inject_fault(&fault).unwrap();
    }
    // One pod makes the pool short of a whole ENI's worth of free addresses, so ipamd grows.
    let p = node.pod("leak", "c-leak").unwrap();
    node.add(&p.pod);
    let leaked = harness::process::wait_for(
        "an ENI left unattached by the failed attach",
        Duration::from_secs(20),
        || {
            let left = unattached_enis(&node);
            (!left.is_empty()).then_some(left)
        },
    )
    .unwrap();
    assert_eq!(leaked.len(), 1, "{leaked:?}");
    harness::process::wait_for("the sweep to delete it", Duration::from_secs(30), || {
        unattached_enis(&node).is_empty().then_some(())
    })
    .unwrap();
    let log = node.ipamd.log_tail(400);
    assert!(log.contains("leaked eni deleted"), "{log}");
    let attached = node.vpc.attached_eni_ids(&node.instance.id).unwrap();
    for eni in &enis_before {
        assert!(attached.contains(eni), "{eni} was detached: {attached:?}");
    }
}
