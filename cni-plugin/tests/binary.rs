//! The built `vpc-cni` binary, run as a runtime runs it (CNI_* env, config on stdin) inside a
//! dedicated "node" namespace, against a scripted CNIBackend on a unix socket. Assertions
//! are on the JSON it prints and on `ip -j` output.

mod common;

use common::cni::{
    conf, err_code, ok, plugin, pod_a_veth, silent_ok, with_prev, Pod, KUBELET_ARGS,
};
use common::server::TestIpamd;
use common::{rules_with_priority, TestNetns};
use serde_json::{json, Value};

fn assert_node_clean(node: &TestNetns, veth: &str) {
    assert!(node.link(veth).is_none(), "host veth {veth} left");
    let rules = node.rules();
    assert!(
        rules_with_priority(&rules, 512).is_empty(),
        "rule 512 left: {rules:?}"
    );
    assert!(
        rules_with_priority(&rules, 1536).is_empty(),
        "rule 1536 left: {rules:?}"
    );
    let routes = node.routes("main");
    assert!(
        !routes.iter().any(|r| r["dev"] == veth),
        "host route left: {routes:?}"
    );
}

#[test]
fn add_check_del_in_every_version() {
    for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let node = TestNetns::new("bin-node");
        let podns = TestNetns::new("bin-pod");
        let ipamd = TestIpamd::start(&["10.0.0.21"]);
        let pod = Pod {
            node: &node,
            netns: podns.path(),
            container_id: "c-aaaa".into(),
            args: KUBELET_ARGS.into(),
        };
        let c = conf(version, &ipamd);

        let result = ok(&pod.run("ADD", &c)).clone();
        assert_eq!(result["cniVersion"], version);
        assert_eq!(result["interfaces"][0]["name"], pod_a_veth());
        assert_eq!(result["interfaces"][1]["name"], "eth0");
        assert_eq!(result["interfaces"][1]["sandbox"], podns.path());
        assert!(result["interfaces"][2]["name"]
            .as_str()
            .unwrap()
            .starts_with("dummy"));
        assert_eq!(result["interfaces"][2]["mac"], "0");
        assert_eq!(result["interfaces"][2]["sandbox"], "2");
        assert_eq!(result["ips"][0]["address"], "10.0.0.21/32");
        assert_eq!(result["ips"][0]["interface"], 1);
        assert_eq!(
            result["ips"][0].get("version").is_some(),
            version.starts_with("0."),
            "{version}"
        );
        let add = &ipamd.adds()[0];
        assert_eq!(
            (add.k8s_pod_namespace.as_str(), add.k8s_pod_name.as_str()),
            ("ns1", "pod-a")
        );
        assert_eq!(
            (add.network_name.as_str(), add.if_name.as_str()),
            ("aws-cni", "eth0")
        );
        assert_eq!(add.client_version, vpc_cni_proto::CONTRACT_VERSION);
        assert!(node.link(&pod_a_veth()).is_some());
        assert_eq!(rules_with_priority(&node.rules(), 1536)[0]["table"], "3");

        let check = pod.run("CHECK", &with_prev(c.clone(), &result));
        if version == "0.3.1" {
            assert_eq!(err_code(&check), 1, "CHECK needs 0.4.0");
        } else {
            silent_ok(&check);
        }

        silent_ok(&pod.run("DEL", &with_prev(c.clone(), &result)));
        assert_node_clean(&node, &pod_a_veth());
        assert!(podns.link("eth0").is_none());
        assert_eq!(ipamd.allocated(), 0);
        assert_eq!(ipamd.dels()[0].reason, "PodDeleted");
        silent_ok(&pod.run("DEL", &with_prev(c, &result)));
    }
}

#[test]
fn mixed_version_prev_result_for_check_and_del() {
    let node = TestNetns::new("bin-mix");
    let podns = TestNetns::new("bin-mixp");
    let ipamd = TestIpamd::start(&["10.0.0.31"]);
    let pod = Pod {
        node: &node,
        netns: podns.path(),
        container_id: "c-mix".into(),
        args: KUBELET_ARGS.into(),
    };
    let old = ok(&pod.run("ADD", &conf("0.4.0", &ipamd))).clone();
    assert_eq!(old["ips"][0]["version"], "4");
    silent_ok(&pod.run("CHECK", &with_prev(conf("1.0.0", &ipamd), &old)));
    silent_ok(&pod.run("DEL", &with_prev(conf("1.1.0", &ipamd), &old)));
    assert_node_clean(&node, &pod_a_veth());
}

#[test]
fn check_reports_drift_and_needs_prev_result() {
    let node = TestNetns::new("bin-drift");
    let podns = TestNetns::new("bin-driftp");
    let ipamd = TestIpamd::start(&["10.0.0.32"]);
    let pod = Pod {
        node: &node,
        netns: podns.path(),
        container_id: "c-drift".into(),
        args: KUBELET_ARGS.into(),
    };
    let c = conf("1.0.0", &ipamd);
    let result = ok(&pod.run("ADD", &c)).clone();

    assert_eq!(
        err_code(&pod.run("CHECK", &c)),
        7,
        "CHECK without prevResult"
    );
    node.ip(&["route", "del", "10.0.0.32/32"]);
    let out = pod.run("CHECK", &with_prev(c.clone(), &result));
    assert_eq!(err_code(&out), 103);
    let details = out.json.unwrap()["details"].as_str().unwrap().to_string();
    assert!(details.contains("host route 10.0.0.32/32"), "{details}");

    let mut moved = result.clone();
    moved["interfaces"][1]["sandbox"] = json!("/var/run/netns/elsewhere");
    let out = pod.run("CHECK", &with_prev(c, &moved));
    assert_eq!(err_code(&out), 103);
    assert!(out.json.unwrap()["details"]
        .as_str()
        .unwrap()
        .contains("sandbox"));
}

#[test]
fn failed_wiring_releases_the_address() {
    let node = TestNetns::new("bin-rb");
    let podns = TestNetns::new("bin-rbp");
    let ipamd = TestIpamd::start(&["10.0.0.41"]);
    let pod = Pod {
        node: &node,
        netns: podns.path(),
        container_id: "c-rb".into(),
        args: KUBELET_ARGS.into(),
    };
    // Something claims eth0 in the pod between the plugin's check and its veth creation.
    let pod_ns = podns.name.clone();
    ipamd.with(|s| {
        s.on_add = Some(Box::new(move || {
            common::run(
                "ip",
                &[
                    "-n", &pod_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "x0",
                ],
            );
        }))
    });
    let out = pod.run("ADD", &conf("1.0.0", &ipamd));
    assert_eq!(err_code(&out), 101);
    let json = out.json.unwrap();
    assert_eq!(json["msg"], "add command: failed to setup network");
    assert!(
        json["details"].as_str().unwrap().contains("file exists"),
        "{json}"
    );
    let dels = ipamd.dels();
    assert_eq!(dels.len(), 1);
    assert_eq!(dels[0].reason, "SetupNSFailed");
    assert_eq!(ipamd.allocated(), 0);
    assert_node_clean(&node, &pod_a_veth());
}

#[test]
fn existing_interface_is_refused_before_allocating() {
    let node = TestNetns::new("bin-taken");
    let podns = TestNetns::new("bin-takenp");
    let ipamd = TestIpamd::start(&["10.0.0.42"]);
    podns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "x0"]);
    let pod = Pod {
        node: &node,
        netns: podns.path(),
        container_id: "c-t".into(),
        args: KUBELET_ARGS.into(),
    };
    assert_eq!(err_code(&pod.run("ADD", &conf("1.0.0", &ipamd))), 4);
    assert!(ipamd.adds().is_empty(), "no address asked for");
}

#[test]
fn leftover_host_link_is_replaced() {
    let node = TestNetns::new("bin-left");
    let podns = TestNetns::new("bin-leftp");
    let ipamd = TestIpamd::start(&["10.0.0.43"]);
    node.ip(&[
        "link",
        "add",
        &pod_a_veth(),
        "type",
        "veth",
        "peer",
        "name",
        "old0",
    ]);
    let pod = Pod {
        node: &node,
        netns: podns.path(),
        container_id: "c-l".into(),
        args: KUBELET_ARGS.into(),
    };
    ok(&pod.run("ADD", &conf("1.0.0", &ipamd)));
    assert!(node.link("old0").is_none());
}

#[test]
fn del_with_ipamd_down_cleans_up_from_prev_result() {
    let node = TestNetns::new("bin-down");
    let mut podns = TestNetns::new("bin-downp");
    let mut ipamd = TestIpamd::start(&["10.0.0.51"]);
    let pod = Pod {
        node: &node,
        netns: podns.path(),
        container_id: "c-d".into(),
        args: KUBELET_ARGS.into(),
    };
    let c = conf("0.4.0", &ipamd);
    let result = ok(&pod.run("ADD", &c)).clone();

    // The sandbox is gone (its veth with it) and so is ipamd: only the rules remain, and
    // only prevResult knows the address.
    podns.delete();
    ipamd.stop();
    assert_eq!(rules_with_priority(&node.rules(), 512).len(), 1);
    silent_ok(&pod.run("DEL", &with_prev(c.clone(), &result)));
    assert_node_clean(&node, &pod_a_veth());
    silent_ok(&pod.run("DEL", &c));
}

#[test]
fn del_with_empty_netns_still_releases() {
    let node = TestNetns::new("bin-empty");
    let podns = TestNetns::new("bin-emptyp");
    let ipamd = TestIpamd::start(&["10.0.0.52"]);
    let pod = Pod {
        node: &node,
        netns: podns.path(),
        container_id: "c-e".into(),
        args: KUBELET_ARGS.into(),
    };
    let c = conf("1.0.0", &ipamd);
    ok(&pod.run("ADD", &c));
    let empty = Pod {
        netns: String::new(),
        ..pod
    };
    silent_ok(&empty.run("DEL", &c));
    assert_eq!(ipamd.allocated(), 0, "address released");
    assert_node_clean(&node, &pod_a_veth());
}

#[test]
fn del_with_dangling_netns_path_cleans_host() {
    let node = TestNetns::new("bin-dang");
    let mut podns = TestNetns::new("bin-dangp");
    let ipamd = TestIpamd::start(&["10.0.0.53"]);
    let pod = Pod {
        node: &node,
        netns: podns.path(),
        container_id: "c-g".into(),
        args: KUBELET_ARGS.into(),
    };
    let c = conf("1.0.0", &ipamd);
    ok(&pod.run("ADD", &c));
    podns.delete();
    silent_ok(&pod.run("DEL", &c));
    assert_eq!(ipamd.allocated(), 0);
    assert_node_clean(&node, &pod_a_veth());
}

#[test]
fn del_of_unknown_container_succeeds() {
    let node = TestNetns::new("bin-unk");
    let ipamd = TestIpamd::start(&[]);
    let pod = Pod {
        node: &node,
        netns: String::new(),
        container_id: "c-never".into(),
        args: KUBELET_ARGS.into(),
    };
    silent_ok(&pod.run("DEL", &conf("1.0.0", &ipamd)));
    silent_ok(&pod.run("DEL", &conf("1.0.0", &ipamd)));
}

#[test]
fn cni_args_variants() {
    let cases = [
        (KUBELET_ARGS, "ns1", "pod-a", "c-aaaa"),
        ("IgnoreUnknown=true;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=pod-a;K8S_POD_INFRA_CONTAINER_ID=c-aaaa;FOO=bar", "ns1", "pod-a", "c-aaaa"),
        ("K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=pod-a;K8S_POD_INFRA_CONTAINER_ID=c-aaaa;FOO=bar", "ns1", "pod-a", "c-aaaa"),
        ("IgnoreUnknown=True;K8S_POD_INFRA_CONTAINER_ID=;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=a=b", "ns1", "a=b", "c-args"),
    ];
    for (args, ns, name, infra) in cases {
        let node = TestNetns::new("bin-args");
        let podns = TestNetns::new("bin-argsp");
        let ipamd = TestIpamd::start(&["10.0.0.61"]);
        let pod = Pod {
            node: &node,
            netns: podns.path(),
            container_id: "c-args".into(),
            args: args.into(),
        };
        let c = conf("1.0.0", &ipamd);
        ok(&pod.run("ADD", &c));
        let add = &ipamd.adds()[0];
        assert_eq!(
            (add.k8s_pod_namespace.as_str(), add.k8s_pod_name.as_str()),
            (ns, name),
            "{args}"
        );
        assert_eq!(add.k8s_pod_infra_container_id, infra, "{args}");
        assert!(
            node.link(&vpc_cni::names::host_veth_name("eni", ns, name))
                .is_some(),
            "{args}"
        );
        silent_ok(&pod.run("DEL", &c));
        assert_eq!(ipamd.allocated(), 0, "{args}");
    }
}

#[test]
fn malformed_cni_args_fail_add_but_not_del() {
    let node = TestNetns::new("bin-bad");
    let podns = TestNetns::new("bin-badp");
    let ipamd = TestIpamd::start(&["10.0.0.62"]);
    let c = conf("1.0.0", &ipamd);
    let bad = Pod {
        node: &node,
        netns: podns.path(),
        container_id: "c-bad".into(),
        args: "K8S_POD_NAMESPACE=ns1;K8S_POD_NAME".into(),
    };
    let out = bad.run("ADD", &c);
    assert_eq!(err_code(&out), 4);
    assert!(out.json.unwrap()["msg"]
        .as_str()
        .unwrap()
        .contains("CNI_ARGS"));
    assert!(ipamd.adds().is_empty());
    silent_ok(&bad.run("DEL", &c));
    let empty = Pod {
        args: String::new(),
        ..bad
    };
    silent_ok(&empty.run("DEL", &c));
}

#[test]
fn version_lists_exactly_what_is_supported() {
    let node = TestNetns::new("bin-ver");
    let out = plugin(
        &node,
        &[("CNI_COMMAND", "VERSION")],
        &json!({"cniVersion": "1.1.0"}),
    );
    let json = ok(&out);
    assert_eq!(
        json,
        &json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn unsupported_version_changes_nothing() {
    for version in ["2.0.0", "1.0.1", "0.2.0"] {
        let node = TestNetns::new("bin-unsup");
        let podns = TestNetns::new("bin-unsupp");
        let ipamd = TestIpamd::start(&["10.0.0.63"]);
        let pod = Pod {
            node: &node,
            netns: podns.path(),
            container_id: "c-v".into(),
            args: KUBELET_ARGS.into(),
        };
        let out = pod.run("ADD", &conf(version, &ipamd));
        assert_eq!(err_code(&out), 1);
        let msg = out.json.unwrap()["msg"].as_str().unwrap().to_string();
        assert!(
            msg.contains(version) && msg.contains("0.3.1, 0.4.0, 1.0.0, 1.1.0"),
            "{msg}"
        );
        assert!(ipamd.adds().is_empty());
        assert!(node.link(&pod_a_veth()).is_none());
        assert!(podns.link("eth0").is_none());
    }
}

#[test]
fn version_skew_with_ipamd_is_reported() {
    let node = TestNetns::new("bin-skew");
    let podns = TestNetns::new("bin-skewp");
    let ipamd = TestIpamd::start(&["10.0.0.64"]);
    ipamd.with(|s| s.expect_version = "9.9.9".into());
    let pod = Pod {
        node: &node,
        netns: podns.path(),
        container_id: "c-s".into(),
        args: KUBELET_ARGS.into(),
    };
    let out = pod.run("ADD", &conf("1.0.0", &ipamd));
    assert_eq!(err_code(&out), 100);
    assert!(out.json.unwrap()["details"]
        .as_str()
        .unwrap()
        .contains("9.9.9"));
}

#[test]
fn empty_pool_and_missing_ipamd_ask_to_retry() {
    let node = TestNetns::new("bin-empty-pool");
    let podns = TestNetns::new("bin-epp");
    let mut ipamd = TestIpamd::start(&[]);
    let pod = Pod {
        node: &node,
        netns: podns.path(),
        container_id: "c-p".into(),
        args: KUBELET_ARGS.into(),
    };
    let out = pod.run("ADD", &conf("1.0.0", &ipamd));
    assert_eq!(err_code(&out), 11);
    assert_eq!(
        out.json.unwrap()["msg"],
        "add cmd: failed to assign an IP address to container"
    );
    ipamd.stop();
    assert_eq!(err_code(&pod.run("ADD", &conf("1.0.0", &ipamd))), 11);
    assert!(podns.link("eth0").is_none());
}

#[test]
fn status_tracks_ipamd_without_caching() {
    let node = TestNetns::new("bin-status");
    let mut ipamd = TestIpamd::start(&["10.0.0.71"]);
    let status = |ipamd: &TestIpamd, version: &str| {
        plugin(
            &node,
            &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/opt/cni/bin")],
            &conf(version, ipamd),
        )
    };
    silent_ok(&status(&ipamd, "1.1.0"));
    ipamd.with(|s| s.ready = false);
    assert_eq!(err_code(&status(&ipamd, "1.1.0")), 50);
    ipamd.with(|s| s.ready = true);
    silent_ok(&status(&ipamd, "1.1.0"));
    ipamd.stop();
    assert_eq!(err_code(&status(&ipamd, "1.1.0")), 50);
    ipamd.resume();
    silent_ok(&status(&ipamd, "1.1.0"));
    assert_eq!(err_code(&status(&ipamd, "1.0.0")), 1, "STATUS needs 1.1.0");
}

#[test]
fn gc_releases_only_attachments_not_listed() {
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let node = TestNetns::new("bin-gc");
        let pods: Vec<TestNetns> = (0..3).map(|_| TestNetns::new("bin-gcp")).collect();
        let ipamd = TestIpamd::start(&["10.0.0.81", "10.0.0.82", "10.0.0.83"]);
        let names = ["pod-a", "pod-b", "pod-c"];
        for (i, podns) in pods.iter().enumerate() {
            let args = format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME={}",
                names[i]
            );
            let pod = Pod {
                node: &node,
                netns: podns.path(),
                container_id: format!("c-{i}"),
                args,
            };
            ok(&pod.run("ADD", &conf("1.1.0", &ipamd)));
        }
        let veth = |name: &str| vpc_cni::names::host_veth_name("eni", "ns1", name);
        let mut c = conf("1.1.0", &ipamd);
        c[key] = json!([{"containerID": "c-0", "ifname": "eth0"}, {"containerID": "c-2", "ifname": "eth0"}]);
        silent_ok(&plugin(
            &node,
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
            &c,
        ));

        assert_eq!(ipamd.allocated(), 2, "{key}");
        assert!(
            node.link(&veth("pod-b")).is_none(),
            "{key}: released attachment's veth removed"
        );
        assert!(node.link(&veth("pod-a")).is_some() && node.link(&veth("pod-c")).is_some());
        let to = rules_with_priority(&node.rules(), 512);
        assert_eq!(to.len(), 2, "{key}: {to:?}");
        assert!(!to.iter().any(|r| r["dst"] == "10.0.0.82"));
    }
}

#[test]
fn gc_edge_cases() {
    let node = TestNetns::new("bin-gce");
    let podns = TestNetns::new("bin-gcep");
    let ipamd = TestIpamd::start(&["10.0.0.91"]);
    let pod = Pod {
        node: &node,
        netns: podns.path(),
        container_id: "c-g".into(),
        args: KUBELET_ARGS.into(),
    };
    ok(&pod.run("ADD", &conf("1.1.0", &ipamd)));
    let gc = |c: &Value| {
        plugin(
            &node,
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/opt/cni/bin")],
            c,
        )
    };

    let mut disabled = conf("1.1.0", &ipamd);
    disabled["disableGC"] = json!(true);
    disabled["cni.dev/valid-attachments"] = json!([]);
    silent_ok(&gc(&disabled));
    assert_eq!(ipamd.allocated(), 1, "disableGC is a no-op");

    let mut old = conf("1.0.0", &ipamd);
    old["cni.dev/valid-attachments"] = json!([]);
    assert_eq!(err_code(&gc(&old)), 1, "GC needs 1.1.0");
    assert_eq!(
        err_code(&gc(&conf("1.1.0", &ipamd))),
        7,
        "no attachment list at all"
    );
    assert_eq!(ipamd.allocated(), 1);

    let mut empty = conf("1.1.0", &ipamd);
    empty["cni.dev/valid-attachments"] = json!([]);
    silent_ok(&gc(&empty));
    assert_eq!(
        ipamd.allocated(),
        0,
        "an empty list frees every attachment of the network"
    );
    assert_node_clean(&node, &pod_a_veth());
}

#[test]
fn stdout_is_one_document_and_logs_go_elsewhere() {
    let node = TestNetns::new("bin-log");
    let podns = TestNetns::new("bin-logp");
    let ipamd = TestIpamd::start(&["10.0.0.92"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("plugin.log");
    let mut c = conf("1.0.0", &ipamd);
    c["pluginLogFile"] = json!(log.to_str().unwrap());
    let pod = Pod {
        node: &node,
        netns: podns.path(),
        container_id: "c-log".into(),
        args: KUBELET_ARGS.into(),
    };
    ok(&pod.run("ADD", &c));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("address assigned") && text.contains("c-log"),
        "{text}"
    );
}

#[test]
fn missing_env_is_code_4_naming_the_variable() {
    let node = TestNetns::new("bin-env");
    let ipamd = TestIpamd::start(&[]);
    let out = plugin(
        &node,
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ],
        &conf("1.0.0", &ipamd),
    );
    assert_eq!(err_code(&out), 4);
    assert!(out.json.unwrap()["msg"]
        .as_str()
        .unwrap()
        .contains("CNI_NETNS"));
}
