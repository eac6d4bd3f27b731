//! CNI conformance of vpc-cni: every verb at every version it serves, run on a simulated node
//! the way a runtime runs it. Where the CNI spec rather than our design defines the answer, the
//! same call goes to Debian's ptp plugin (host-local IPAM) on a node namespace of its own, and
//! the two must agree. Where they legitimately differ, the table says why and pins the
//! reference's answer too, so a change on either side shows up here.
//!
//! The reference serves CNI up to 1.0.0 only (asserted below), so 1.1.0, STATUS and GC are
//! checked against the spec alone. Needs root, the built workspace binaries and Debian's
//! containernetworking-plugins.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use harness::netns::{ip_json, require_root, Netns};
use harness::node::Node;
use harness::plugin::{self, Outcome, Pod};
use ipnet::Ipv4Net;
use serde_json::{json, Value};
use tempfile::TempDir;

/// Exactly the versions vpc-cni serves, oldest first.
const OURS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const REFERENCE: &str = "/usr/lib/cni/ptp";
const REFERENCE_SUBNET: &str = "10.99.0.0/24";

/// What a call must end in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Ok,
    /// Fails with this CNI error code.
    Code(u64),
    /// Fails with a well-formed CNI error; the spec names no code for it.
    Fails,
}

/// The reference's answer to the same call.
#[derive(Debug, Clone, Copy)]
enum Ref {
    Same,
    /// A documented difference: the reference's answer, and why it may differ.
    Differs(Want, &'static str),
}

/// One plugin under test: the namespace standing for its node, its binary, its network config
/// (without cniVersion) and how to list the addresses its IPAM holds.
struct Subject<'a> {
    label: &'static str,
    node_netns: String,
    binary: PathBuf,
    conf: Value,
    held: Box<dyn Fn() -> Vec<String> + 'a>,
}

impl Subject<'_> {
    fn conf_at(&self, version: &str) -> Value {
        let mut conf = self.conf.clone();
        conf["cniVersion"] = json!(version);
        conf
    }

    fn invoke(&self, env: &[(String, String)], stdin: &[u8]) -> Outcome {
        plugin::exec(&self.node_netns, &self.binary, env, stdin)
            .unwrap_or_else(|e| panic!("{}: {e:#}", self.label))
    }

    fn call(&self, command: &str, pod: &Pod, conf: &Value) -> Outcome {
        let env = plugin::cni_env(command, pod);
        self.invoke(&env, conf.to_string().as_bytes())
    }

    fn call_prev(&self, command: &str, pod: &Pod, version: &str, prev: &Value) -> Outcome {
        self.call(
            command,
            pod,
            &plugin::with_prev_result(&self.conf_at(version), prev),
        )
    }

    /// ADD that must succeed; returns the result.
    fn add(&self, pod: &Pod, version: &str) -> Value {
        let out = self.call("ADD", pod, &self.conf_at(version));
        expect(self.label, &format!("ADD at {version}"), &out, Want::Ok);
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: ADD result is not JSON ({e}): {}",
                self.label, out.stdout
            )
        })
    }
}

/// ptp's node: a namespace of its own, host-local's reservations in a temporary directory.
struct Reference {
    host: Netns,
    data: TempDir,
}

impl Reference {
    fn new() -> Self {
        assert!(
            Path::new(REFERENCE).exists(),
            "{REFERENCE} is missing: install Debian's containernetworking-plugins"
        );
        Reference {
            host: Netns::new("ptphost").expect("create the reference node namespace"),
            data: tempfile::tempdir().expect("host-local data dir"),
        }
    }

    fn subject(&self) -> Subject<'_> {
        let name = "conformance";
        let leases = self.data.path().join(name);
        Subject {
            label: "ptp",
            node_netns: self.host.name.clone(),
            binary: REFERENCE.into(),
            conf: json!({
                "name": name,
                "type": "ptp",
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "subnet": REFERENCE_SUBNET,
                    "dataDir": self.data.path(),
                },
            }),
            held: Box::new(move || host_local_leases(&leases)),
        }
    }
}

/// host-local keeps one file per reserved address, named after it.
fn host_local_leases(dir: &Path) -> Vec<String> {
    let names = std::fs::read_dir(dir).into_iter().flatten().flatten();
    names
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.parse::<Ipv4Addr>().is_ok())
        .collect()
}

fn ours(node: &Node) -> Subject<'_> {
    let mut conf = node.conf.clone();
    conf.as_object_mut()
        .expect("netconf object")
        .remove("cniVersion");
    Subject {
        label: "vpc-cni",
        node_netns: node.netns().to_string(),
        binary: harness::bins::path("vpc-cni"),
        conf,
        held: Box::new(|| node.ipamd.assigned_ips().expect("ipamd introspection")),
    }
}

/// A pod namespace and the identity a runtime passes for it; the namespace goes on drop.
fn new_pod(tag: &str) -> (Netns, Pod) {
    let ns = Netns::new(tag).expect("create pod namespace");
    let pod = Pod::new("default", &format!("p-{}", ns.name), &ns.name, &ns.path());
    (ns, pod)
}

/// The CNI error object on stdout, checked for the fields every version requires.
fn error_reply(who: &str, what: &str, out: &Outcome) -> Value {
    let reply: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{who}: {what}: failed without a JSON error ({e}): {out:?}"));
    assert!(
        reply["code"].is_u64() && reply["msg"].is_string(),
        "{who}: {what}: error lacks code or msg: {reply}"
    );
    reply
}

fn expect(who: &str, what: &str, out: &Outcome, want: Want) {
    match want {
        Want::Ok => assert!(out.ok(), "{who}: {what}: expected success, got {out:?}"),
        Want::Fails | Want::Code(_) => {
            assert!(!out.ok(), "{who}: {what}: expected failure, got {out:?}");
            let reply = error_reply(who, what, out);
            if let Want::Code(code) = want {
                assert_eq!(reply["code"], code, "{who}: {what}: wrong code: {reply}");
            }
        }
    }
}

/// Checks one call against ours and the reference as the table row says.
fn expect_both(
    ours: &Subject,
    ours_out: &Outcome,
    reference: &Subject,
    ref_out: &Outcome,
    what: &str,
    want: Want,
    r: Ref,
) {
    expect(ours.label, what, ours_out, want);
    match r {
        Ref::Same => expect(reference.label, what, ref_out, want),
        Ref::Differs(theirs, why) => {
            let what = format!("{what} (documented difference: {why})");
            expect(reference.label, &what, ref_out, theirs);
        }
    }
    if !ours_out.ok() {
        let reply = error_reply(ours.label, what, ours_out);
        assert!(
            reply["cniVersion"].is_string(),
            "vpc-cni: {what}: error lacks cniVersion: {reply}"
        );
    }
}

fn supported_versions(subject: &Subject, input: &str) -> (String, Vec<String>) {
    let env = [("CNI_COMMAND".to_string(), "VERSION".to_string())];
    let out = subject.invoke(&env, json!({ "cniVersion": input }).to_string().as_bytes());
    expect(subject.label, &format!("VERSION {input}"), &out, Want::Ok);
    let reply: Value = serde_json::from_str(&out.stdout).expect("VERSION reply is JSON");
    let versions = reply["supportedVersions"]
        .as_array()
        .expect("supportedVersions")
        .iter()
        .map(|v| v.as_str().expect("version string").to_string())
        .collect();
    (
        reply["cniVersion"].as_str().unwrap_or_default().to_string(),
        versions,
    )
}

/// The versions both plugins serve: where results can be compared.
fn shared_versions(ours: &Subject, reference: &Subject) -> Vec<&'static str> {
    let (_, theirs) = supported_versions(reference, "1.0.0");
    let (_, mine) = supported_versions(ours, "1.0.0");
    OURS.into_iter()
        .filter(|v| theirs.iter().any(|t| t == v) && mine.iter().any(|m| m == v))
        .collect()
}

#[test]
fn version_reports_exactly_the_served_versions() {
    require_root();
    let node = Netns::new("vernode").unwrap();
    let reference = Reference::new();
    let theirs = reference.subject();
    let ours = Subject {
        label: "vpc-cni",
        node_netns: node.name.clone(),
        binary: harness::bins::path("vpc-cni"),
        conf: json!({}),
        held: Box::new(Vec::new),
    };

    // Asked in each served version, the answer is in that version and lists exactly ours.
    for input in OURS {
        let (answered, versions) = supported_versions(&ours, input);
        assert_eq!(versions, OURS, "VERSION asked in {input}");
        assert_eq!(
            answered, input,
            "VERSION asked in {input} answered in {answered}"
        );
    }
    let (_, versions) = supported_versions(&ours, "2.0.0");
    assert_eq!(versions, OURS, "VERSION asked in an unknown version");

    // The reference serves every version ours does but 1.1.0; the comparisons below rely on
    // that, so a reference that learns 1.1.0 fails here until STATUS and GC are compared too.
    let (_, reference_versions) = supported_versions(&theirs, "1.0.0");
    for v in &OURS[..3] {
        assert!(
            reference_versions.iter().any(|r| r == v),
            "ptp lacks {v}: {reference_versions:?}"
        );
    }
    assert!(
        !reference_versions.iter().any(|r| r == "1.1.0"),
        "ptp now serves 1.1.0: compare STATUS and GC with it as well"
    );
}

/// How a row's call differs from a well-formed ADD/CHECK at 1.0.0.
#[derive(Clone, Copy)]
enum Input {
    Conf(&'static str),
    Edited(&'static str, fn(&mut Value)),
    Raw(&'static str),
}

#[derive(Clone, Copy)]
enum EnvEdit {
    Keep,
    Unset(&'static str),
    Set(&'static str, &'static str),
}

struct ErrorCase {
    what: &'static str,
    command: &'static str,
    input: Input,
    env: EnvEdit,
    ours: Want,
    reference: Ref,
}

const PTP_999: &str = "ptp answers 999, the spec names no code";

/// Calls the spec answers before a plugin does any work: ours runs on a node namespace with no
/// ipamd, so a row that got past validation would fail with 11 instead.
const ERROR_CASES: &[ErrorCase] = &[
    ErrorCase {
        what: "cniVersion 2.0.0",
        command: "ADD",
        input: Input::Conf("2.0.0"),
        env: EnvEdit::Keep,
        ours: Want::Code(1),
        reference: Ref::Same,
    },
    ErrorCase {
        what: "cniVersion 1.0.1, which no spec has",
        command: "ADD",
        input: Input::Conf("1.0.1"),
        env: EnvEdit::Keep,
        ours: Want::Code(1),
        reference: Ref::Same,
    },
    ErrorCase {
        what: "cniVersion that is not a version",
        command: "ADD",
        input: Input::Conf("abc"),
        env: EnvEdit::Keep,
        ours: Want::Code(1),
        reference: Ref::Same,
    },
    ErrorCase {
        what: "cniVersion 0.2.0",
        command: "ADD",
        input: Input::Conf("0.2.0"),
        env: EnvEdit::Keep,
        ours: Want::Code(1),
        reference: Ref::Differs(
            Want::Ok,
            "ptp still writes pre-0.3 results; we start at 0.3.1",
        ),
    },
    ErrorCase {
        what: "no cniVersion",
        command: "ADD",
        input: Input::Edited("1.0.0", |c| {
            c.as_object_mut().unwrap().remove("cniVersion");
        }),
        env: EnvEdit::Keep,
        ours: Want::Code(1),
        reference: Ref::Differs(Want::Ok, "ptp reads a config without cniVersion as 0.1.0"),
    },
    ErrorCase {
        what: "stdin is not JSON",
        command: "ADD",
        input: Input::Raw("{bad"),
        env: EnvEdit::Keep,
        ours: Want::Code(6),
        reference: Ref::Same,
    },
    ErrorCase {
        what: "stdin is empty",
        command: "ADD",
        input: Input::Raw(""),
        env: EnvEdit::Keep,
        ours: Want::Code(6),
        reference: Ref::Same,
    },
    ErrorCase {
        what: "prevResult is not a result",
        command: "CHECK",
        input: Input::Edited("1.0.0", |c| c["prevResult"] = json!(5)),
        env: EnvEdit::Keep,
        ours: Want::Code(6),
        reference: Ref::Differs(Want::Fails, PTP_999),
    },
    ErrorCase {
        what: "no network name",
        command: "ADD",
        input: Input::Edited("1.0.0", |c| {
            c.as_object_mut().unwrap().remove("name");
        }),
        env: EnvEdit::Keep,
        ours: Want::Code(7),
        reference: Ref::Same,
    },
    ErrorCase {
        what: "CNI_COMMAND unset",
        command: "ADD",
        input: Input::Conf("1.0.0"),
        env: EnvEdit::Unset("CNI_COMMAND"),
        ours: Want::Code(4),
        reference: Ref::Differs(
            Want::Ok,
            "ptp prints its version banner on stderr and exits 0",
        ),
    },
    ErrorCase {
        what: "CNI_COMMAND unknown",
        command: "ADD",
        input: Input::Conf("1.0.0"),
        env: EnvEdit::Set("CNI_COMMAND", "FROB"),
        ours: Want::Code(4),
        reference: Ref::Same,
    },
    ErrorCase {
        what: "CNI_CONTAINERID unset",
        command: "ADD",
        input: Input::Conf("1.0.0"),
        env: EnvEdit::Unset("CNI_CONTAINERID"),
        ours: Want::Code(4),
        reference: Ref::Same,
    },
    ErrorCase {
        what: "CNI_NETNS unset",
        command: "ADD",
        input: Input::Conf("1.0.0"),
        env: EnvEdit::Unset("CNI_NETNS"),
        ours: Want::Code(4),
        reference: Ref::Same,
    },
    ErrorCase {
        what: "CNI_IFNAME unset",
        command: "ADD",
        input: Input::Conf("1.0.0"),
        env: EnvEdit::Unset("CNI_IFNAME"),
        ours: Want::Code(4),
        reference: Ref::Same,
    },
    ErrorCase {
        what: "CNI_IFNAME longer than 15 bytes",
        command: "ADD",
        input: Input::Conf("1.0.0"),
        env: EnvEdit::Set("CNI_IFNAME", "eth0123456789abc"),
        ours: Want::Code(4),
        reference: Ref::Same,
    },
    ErrorCase {
        what: "CNI_NETNS names no namespace",
        command: "ADD",
        input: Input::Conf("1.0.0"),
        env: EnvEdit::Set("CNI_NETNS", "/var/run/netns/vpc-cni-conformance-absent"),
        ours: Want::Code(4),
        reference: Ref::Differs(Want::Fails, PTP_999),
    },
    ErrorCase {
        what: "CHECK below 0.4.0",
        command: "CHECK",
        input: Input::Conf("0.3.1"),
        env: EnvEdit::Keep,
        ours: Want::Code(1),
        reference: Ref::Same,
    },
    ErrorCase {
        what: "CHECK without prevResult",
        command: "CHECK",
        input: Input::Conf("1.0.0"),
        env: EnvEdit::Keep,
        ours: Want::Code(7),
        reference: Ref::Differs(Want::Fails, PTP_999),
    },
    ErrorCase {
        what: "STATUS below 1.1.0",
        command: "STATUS",
        input: Input::Conf("1.0.0"),
        env: EnvEdit::Keep,
        ours: Want::Code(1),
        reference: Ref::Differs(Want::Code(4), "ptp predates STATUS: an unknown command"),
    },
    ErrorCase {
        what: "GC below 1.1.0",
        command: "GC",
        input: Input::Conf("1.0.0"),
        env: EnvEdit::Keep,
        ours: Want::Code(1),
        reference: Ref::Differs(Want::Code(4), "ptp predates GC: an unknown command"),
    },
];

impl ErrorCase {
    fn run(&self, subject: &Subject, pod: &Pod) -> Outcome {
        let mut env = plugin::cni_env(self.command, pod);
        match self.env {
            EnvEdit::Keep => {}
            EnvEdit::Unset(name) => env.retain(|(k, _)| k != name),
            EnvEdit::Set(name, value) => {
                env.retain(|(k, _)| k != name);
                env.push((name.to_string(), value.to_string()));
            }
        }
        let stdin = match self.input {
            Input::Conf(version) => subject.conf_at(version).to_string(),
            Input::Edited(version, edit) => {
                let mut conf = subject.conf_at(version);
                edit(&mut conf);
                conf.to_string()
            }
            Input::Raw(text) => text.to_string(),
        };
        subject.invoke(&env, stdin.as_bytes())
    }
}

#[test]
fn protocol_errors_agree_with_reference() {
    require_root();
    let node = Netns::new("errnode").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = plugin::netconf_from_conflist(
        &plugin::repo_conflist(),
        &json!({
            "ipamdSocket": dir.path().join("absent.sock"),
            "pluginLogFile": dir.path().join("plugin.log"),
        }),
    );
    let ours = Subject {
        label: "vpc-cni",
        node_netns: node.name.clone(),
        binary: harness::bins::path("vpc-cni"),
        conf,
        held: Box::new(Vec::new),
    };
    let reference = Reference::new();
    let theirs = reference.subject();

    for case in ERROR_CASES {
        let (_ns_a, pod_a) = new_pod("err");
        let (_ns_b, pod_b) = new_pod("err");
        let mine = case.run(&ours, &pod_a);
        let other = case.run(&theirs, &pod_b);
        expect_both(
            &ours,
            &mine,
            &theirs,
            &other,
            case.what,
            case.ours,
            case.reference,
        );
    }
}

/// Checks an ADD result against the spec for `version` and against the pod namespace itself.
fn assert_result_shape(who: &str, result: &Value, version: &str, pod: &Pod, pod_ns: &Netns) {
    let what = format!("{who}: ADD at {version}");
    assert_eq!(
        result["cniVersion"], version,
        "{what}: cniVersion not echoed: {result}"
    );
    let interfaces = result["interfaces"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no interfaces"));
    assert!(
        interfaces.iter().all(|i| i["name"].is_string()),
        "{what}: unnamed interface: {result}"
    );
    let ips = result["ips"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no ips"));
    assert!(!ips.is_empty(), "{what}: empty ips");
    for ip in ips {
        // 0.3.x and 0.4.0 carry the address family; 1.0.0 dropped the field.
        let family = ip.get("version");
        if version.starts_with("0.") {
            assert_eq!(
                family,
                Some(&json!("4")),
                "{what}: ips entry without version 4: {ip}"
            );
        } else {
            assert_eq!(family, None, "{what}: ips entry with a version field: {ip}");
        }
        let index = ip["interface"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what}: {ip} has no interface"));
        let iface = interfaces
            .get(index as usize)
            .unwrap_or_else(|| panic!("{what}: interface index {index} out of range"));
        assert_eq!(
            iface["sandbox"], pod.netns,
            "{what}: {iface} is not in CNI_NETNS"
        );
        assert_eq!(
            iface["name"], pod.ifname,
            "{what}: {iface} is not CNI_IFNAME"
        );
        let address: Ipv4Net = ip["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{what}: {ip} address is not IPv4 CIDR"));
        assert_live(&what, pod_ns, &pod.ifname, iface, address);
    }
}

/// The interface a result names exists in the pod with that MAC and address.
fn assert_live(what: &str, pod_ns: &Netns, ifname: &str, iface: &Value, address: Ipv4Net) {
    let links = ip_json(&pod_ns.name, &["link", "show", "dev", ifname]).unwrap();
    let live_mac = links
        .first()
        .and_then(|l| l["address"].as_str())
        .unwrap_or_default();
    if let Some(mac) = iface["mac"].as_str() {
        assert_eq!(
            mac, live_mac,
            "{what}: result MAC differs from the live {ifname}"
        );
    }
    let addrs = ip_json(&pod_ns.name, &["-4", "addr", "show", "dev", ifname]).unwrap();
    let live: Vec<String> = addrs
        .iter()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect();
    assert!(
        live.contains(&address.to_string()),
        "{what}: {address} is not on {ifname} in the pod: {live:?}"
    );
}

fn address_of(result: &Value) -> String {
    let cidr = result["ips"][0]["address"]
        .as_str()
        .expect("ips[0].address");
    cidr.split('/').next().unwrap_or_default().to_string()
}

/// ADD, CHECK, DEL, DEL again and DEL without prevResult for one version; the address must be
/// held after ADD and free after the first DEL.
fn lifecycle(subject: &Subject, version: &str) {
    let (ns, pod) = new_pod("life");
    let result = subject.add(&pod, version);
    assert_result_shape(subject.label, &result, version, &pod, &ns);
    let ip = address_of(&result);
    assert!(
        (subject.held)().contains(&ip),
        "{}: {ip} not held after ADD",
        subject.label
    );

    let check = subject.call_prev("CHECK", &pod, version, &result);
    let want = if version == "0.3.1" {
        Want::Code(1)
    } else {
        Want::Ok
    };
    expect(subject.label, &format!("CHECK at {version}"), &check, want);

    for (what, prev) in [
        ("DEL", Some(&result)),
        ("DEL again", Some(&result)),
        ("DEL without prevResult", None),
    ] {
        let out = match prev {
            Some(prev) => subject.call_prev("DEL", &pod, version, prev),
            None => subject.call("DEL", &pod, &subject.conf_at(version)),
        };
        expect(
            subject.label,
            &format!("{what} at {version}"),
            &out,
            Want::Ok,
        );
        assert!(
            out.stdout.trim().is_empty(),
            "{}: {what} printed {}",
            subject.label,
            out.stdout
        );
        assert!(
            !(subject.held)().contains(&ip),
            "{}: {ip} still held after {what}",
            subject.label
        );
    }
}

#[test]
fn every_version_gives_spec_results_like_reference() {
    require_root();
    let node = Node::start(&[]).unwrap();
    let ours = ours(&node);
    let reference = Reference::new();
    let theirs = reference.subject();
    let shared = shared_versions(&ours, &theirs);

    for version in OURS {
        lifecycle(&ours, version);
        if shared.contains(&version) {
            lifecycle(&theirs, version);
        } else {
            // Not served by the reference: it must say so with code 1, as ours does below.
            let (_ns, pod) = new_pod("unserved");
            let out = theirs.call("ADD", &pod, &theirs.conf_at(version));
            expect(
                theirs.label,
                &format!("ADD at {version}"),
                &out,
                Want::Code(1),
            );
        }
    }

    // An unsupported version fails before anything is allocated or wired.
    let (_ns, pod) = new_pod("v2");
    let before = (ours.held)();
    let out = ours.call("ADD", &pod, &ours.conf_at("2.0.0"));
    expect(ours.label, "ADD at 2.0.0", &out, Want::Code(1));
    let msg = error_reply(ours.label, "ADD at 2.0.0", &out).to_string();
    assert!(
        msg.contains("2.0.0") && msg.contains("1.1.0"),
        "message names neither side: {msg}"
    );
    assert_eq!(
        (ours.held)(),
        before,
        "an address was allocated for an unsupported version"
    );
    let veth = plugin::host_veth_name("eni", &pod.namespace, &pod.name);
    assert!(
        !node.has_link(&veth),
        "{veth} was created for an unsupported version"
    );
}

/// (ADD's version, the version of the config that later carries its result as prevResult).
const MIXED: &[(&str, &str)] = &[
    ("0.4.0", "1.0.0"),
    ("1.0.0", "0.4.0"),
    ("0.3.1", "1.1.0"),
    ("1.1.0", "0.4.0"),
];

/// Ptp 1.1.1 (libcni before 1.2) decodes prevResult with the config's version.
const PTP_MIXED: &str = "ptp decodes prevResult as the config's version, not its own";

#[test]
fn prev_result_is_read_in_its_own_version() {
    require_root();
    let node = Node::start(&[]).unwrap();
    let ours = ours(&node);
    let reference = Reference::new();
    let theirs = reference.subject();
    let shared = shared_versions(&ours, &theirs);

    for &(added, conf) in MIXED {
        let both = shared.contains(&added) && shared.contains(&conf);
        for (subject, check_want) in [
            (&ours, Ref::Same),
            (&theirs, Ref::Differs(Want::Fails, PTP_MIXED)),
        ] {
            if subject.label == theirs.label && !both {
                continue;
            }
            let (_ns, pod) = new_pod("mixed");
            let result = subject.add(&pod, added);
            let what = format!("{added} prevResult under a {conf} config");
            let check = subject.call_prev("CHECK", &pod, conf, &result);
            let want = match check_want {
                Ref::Same => Want::Ok,
                Ref::Differs(theirs, _) => theirs,
            };
            expect(
                subject.label,
                &format!("CHECK with {what} ({check_want:?})"),
                &check,
                want,
            );
            let del = subject.call_prev("DEL", &pod, conf, &result);
            expect(subject.label, &format!("DEL with {what}"), &del, Want::Ok);
            let ip = address_of(&result);
            assert!(
                !(subject.held)().contains(&ip),
                "{}: {ip} held after DEL with {what}",
                subject.label
            );
        }
    }
}

/// Which entry of a result an edit changes.
#[derive(Clone, Copy)]
enum Entry {
    /// The interface `ips[0]` points at: the one in the pod.
    PodInterface,
    FirstIp,
}

/// prevResult edits that CHECK must report, since the live pod no longer matches them.
const DRIFT: &[(&str, Entry, &str, &str)] = &[
    (
        "sandbox of the pod interface is another namespace",
        Entry::PodInterface,
        "sandbox",
        "/var/run/netns/elsewhere",
    ),
    (
        "address is not the pod's",
        Entry::FirstIp,
        "address",
        "10.99.1.77/32",
    ),
    (
        "MAC is not the pod's",
        Entry::PodInterface,
        "mac",
        "02:00:00:00:00:01",
    ),
    (
        "no interface named CNI_IFNAME",
        Entry::PodInterface,
        "name",
        "eth9",
    ),
];

fn drifted(result: &Value, entry: Entry, field: &str, value: &str) -> Value {
    let mut prev = result.clone();
    let target = match entry {
        Entry::PodInterface => {
            let index = result["ips"][0]["interface"]
                .as_u64()
                .expect("ips[0].interface");
            &mut prev["interfaces"][index as usize]
        }
        Entry::FirstIp => &mut prev["ips"][0],
    };
    target[field] = json!(value);
    prev
}

#[test]
fn check_reports_drift_like_reference() {
    require_root();
    let node = Node::start(&[]).unwrap();
    let ours = ours(&node);
    let reference = Reference::new();
    let theirs = reference.subject();

    for subject in [&ours, &theirs] {
        let (_ns, pod) = new_pod("drift");
        let result = subject.add(&pod, "1.0.0");
        for &(what, entry, field, value) in DRIFT {
            let prev = drifted(&result, entry, field, value);
            let out = subject.call_prev("CHECK", &pod, "1.0.0", &prev);
            expect(
                subject.label,
                &format!("CHECK when {what}"),
                &out,
                Want::Fails,
            );
        }
        // The pod itself was not touched: CHECK against the true result still passes.
        let out = subject.call_prev("CHECK", &pod, "1.0.0", &result);
        expect(
            subject.label,
            "CHECK after the drift checks",
            &out,
            Want::Ok,
        );
        let out = subject.call_prev("DEL", &pod, "1.0.0", &result);
        expect(subject.label, "DEL", &out, Want::Ok);
    }
}

fn attachments(key: &str, pods: &[&Pod]) -> Value {
    let list: Vec<Value> = pods
        .iter()
        .map(|p| json!({ "containerID": p.container_id, "ifname": p.ifname }))
        .collect();
    json!({ key: list })
}

/// The GC-specific part of a config, for the pod under test.
type GcFields = fn(&Pod) -> Value;

/// GC configs (1.1.0) that must leave a live, listed attachment alone and print nothing.
const GC_KEEPS: &[(&str, GcFields)] = &[
    ("cni.dev/valid-attachments lists it", |p| {
        attachments("cni.dev/valid-attachments", &[p])
    }),
    ("only the older cni.dev/attachments lists it", |p| {
        attachments("cni.dev/attachments", &[p])
    }),
    (
        "disableGC with an empty list",
        |_| json!({ "disableGC": true, "cni.dev/valid-attachments": [] }),
    ),
];

#[test]
fn status_and_gc_at_1_1_0() {
    require_root();
    let mut node = Node::start(&[]).unwrap();
    let (_ns, pod) = new_pod("gc");
    let result = {
        let ours = ours(&node);
        let status = ours.call("STATUS", &pod, &ours.conf_at("1.1.0"));
        expect(ours.label, "STATUS with ipamd serving", &status, Want::Ok);
        assert!(
            status.stdout.trim().is_empty(),
            "STATUS printed {}",
            status.stdout
        );

        let result = ours.add(&pod, "1.1.0");
        let ip = address_of(&result);
        for (what, extra) in GC_KEEPS {
            let mut conf = ours.conf_at("1.1.0");
            for (k, v) in extra(&pod).as_object().unwrap() {
                conf[k] = v.clone();
            }
            let out = ours.call("GC", &pod, &conf);
            expect(ours.label, &format!("GC when {what}"), &out, Want::Ok);
            assert!(out.stdout.trim().is_empty(), "GC printed {}", out.stdout);
            assert!((ours.held)().contains(&ip), "GC when {what} released {ip}");
        }
        let out = ours.call("GC", &pod, &ours.conf_at("1.1.0"));
        expect(
            ours.label,
            "GC without an attachment list",
            &out,
            Want::Code(7),
        );
        let out = ours.call_prev("CHECK", &pod, "1.1.0", &result);
        expect(ours.label, "CHECK after GC", &out, Want::Ok);
        result
    };

    // STATUS follows ipamd at once, both ways: nothing is cached between calls.
    node.ipamd.stop();
    let ours_now = ours(&node);
    let out = ours_now.call("STATUS", &pod, &ours_now.conf_at("1.1.0"));
    expect(
        ours_now.label,
        "STATUS with ipamd stopped",
        &out,
        Want::Code(50),
    );
    drop(ours_now);
    node.ipamd.restart().unwrap();
    let ours = ours(&node);
    let out = ours.call("STATUS", &pod, &ours.conf_at("1.1.0"));
    expect(ours.label, "STATUS after ipamd restarted", &out, Want::Ok);
    let out = ours.call_prev("DEL", &pod, "1.1.0", &result);
    expect(ours.label, "DEL", &out, Want::Ok);
}
