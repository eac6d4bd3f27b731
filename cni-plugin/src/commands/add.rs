//! ADD: allocate through ipamd, wire the pod, report the result.

use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use vpc_cni_proto::{AddNetworkReply, AddNetworkRequest, DelNetworkRequest};

use super::{ipamd_err, netlink_err, Error, Output};
use crate::cni::result::{CniResult, Interface, IpConfig};
use crate::cni::{CniEnv, NetConf, PodArgs};
use crate::ipamd::IpamdClient;
use crate::names::{branch_veth_prefix, host_veth_name, pod_identity, record_name};
use crate::netlink::{MacAddr, Netlink, Netns};
use crate::plumbing::branch::{branch_table, subnet_gateway, vlan_id};
use crate::plumbing::{setup_branch_pod, setup_pod, Branch, BranchNetwork, PodNetwork, Wired};

/// Reason ipamd logs for a release caused by a failed ADD.
const SETUP_FAILED: &str = "SetupNSFailed";

/// What ipamd handed out, checked before anything touches the kernel.
struct Allocation {
    ip: Ipv4Addr,
    device: i32,
    /// The route table of the pod's egress: the ENI's, or 100 + VLAN for a branch ENI.
    table: u32,
    branch: Option<Branch>,
}

/// How one pod is wired.
enum Plan {
    Regular { net: PodNetwork, device: i32 },
    Branch(BranchNetwork),
}

impl Plan {
    fn pod(&self) -> &PodNetwork {
        match self {
            Plan::Regular { net, .. } => net,
            Plan::Branch(b) => &b.pod,
        }
    }

    async fn wire(&self, sides: &Sides) -> Result<Wired, crate::plumbing::PlumbingError> {
        match self {
            Plan::Regular { net, .. } => {
                setup_pod(&sides.host, &sides.pod, &sides.pod_netns, net).await
            }
            Plan::Branch(b) => setup_branch_pod(&sides.host, &sides.pod, &sides.pod_netns, b).await,
        }
    }
}

/// The pod's namespace and netlink connections on both sides, opened before anything is
/// allocated so that a bad CNI_NETNS or a taken CNI_IFNAME costs no address.
struct Sides {
    pod_netns: Arc<Netns>,
    pod: Netlink,
    host: Netlink,
}

pub(super) async fn add(env: &CniEnv, conf: &NetConf) -> Result<Output, Error> {
    let args = PodArgs::parse(&env.args)?;
    let context = format!("add pod {}", env.ifname);
    // Independent, so they overlap: the kernel answers one while ipamd answers the other.
    let (sides, ipamd) = tokio::join!(open_sides(env), IpamdClient::connect(&conf.ipamd_socket));
    let sides = sides?;
    let mut ipamd = ipamd.map_err(ipamd_err(&context))?;
    let reply = ipamd
        .add_network(add_request(env, conf, &args))
        .await
        .map_err(ipamd_err(&context))?;
    let alloc = match accept(env, &reply) {
        Ok(alloc) => alloc,
        Err(err) => return Err(release_after(&mut ipamd, env, conf, &args, err).await),
    };
    let vlan = alloc.branch.map(|b| b.vlan);
    tracing::info!(ip = %alloc.ip, table = alloc.table, ?vlan, eni = %reply.eniid, "address assigned");

    let plan = plan(env, conf, &args, &alloc);
    let wired = match plan.wire(&sides).await {
        Ok(wired) => wired,
        Err(source) => {
            let err = Error::Setup {
                ifname: env.ifname.clone(),
                source,
            };
            return Err(release_after(&mut ipamd, env, conf, &args, err).await);
        }
    };
    tracing::info!(host_veth = %plan.pod().host_veth, ip = %alloc.ip, ?vlan, "pod wired");
    let (namespace, name) = identity(env, &args);
    let ours = result(env, &plan, wired, &record_name(namespace, name));
    Ok(Output::Result(merged(conf, ours).encode(conf.cni_version)))
}

/// Regular pods get the configured veth prefix; branch-ENI pods the one of their mode.
fn plan(env: &CniEnv, conf: &NetConf, args: &PodArgs, alloc: &Allocation) -> Plan {
    let (namespace, name) = identity(env, args);
    let prefix = match alloc.branch {
        Some(_) => branch_veth_prefix(conf.sg_mode, &conf.veth_prefix),
        None => &conf.veth_prefix,
    };
    let net = PodNetwork {
        host_veth: host_veth_name(prefix, namespace, name),
        ifname: env.ifname.clone(),
        ip: alloc.ip,
        table: alloc.table,
        mtu: conf.mtu,
    };
    match alloc.branch {
        Some(branch) => Plan::Branch(BranchNetwork::new(net, branch, conf.sg_mode)),
        None => Plan::Regular {
            net,
            device: alloc.device,
        },
    }
}

async fn open_sides(env: &CniEnv) -> Result<Sides, Error> {
    let netns_path = env.netns.clone().expect("validated: ADD has CNI_NETNS");
    let pod_netns = Arc::new(open_pod_netns(&netns_path)?);
    let pod = Netlink::in_netns(pod_netns.clone()).map_err(netlink_err("open pod netlink"))?;
    // The spec requires an error when the interface exists; find out before allocating.
    if pod
        .link_by_name(&env.ifname)
        .await
        .map_err(netlink_err("read pod links"))?
        .is_some()
    {
        return Err(Error::IfnameTaken {
            ifname: env.ifname.clone(),
            netns: netns_path,
        });
    }
    let host = Netlink::current().map_err(netlink_err("open host netlink"))?;
    Ok(Sides {
        pod_netns,
        pod,
        host,
    })
}

fn open_pod_netns(path: &std::path::Path) -> Result<Netns, Error> {
    let netns = Netns::open(path).map_err(Error::Netns)?;
    let own = Netns::current().map_err(Error::Netns)?;
    // Wiring our own namespace as a pod would move node routes into a "pod".
    if netns.same_as(&own).map_err(Error::Netns)? {
        return Err(Error::OwnNetns(path.to_path_buf()));
    }
    Ok(netns)
}

pub(super) fn identity<'a>(env: &'a CniEnv, args: &'a PodArgs) -> (&'a str, &'a str) {
    pod_identity(
        &args.pod_namespace,
        &args.pod_name,
        &env.container_id,
        &env.ifname,
    )
}

fn add_request(env: &CniEnv, conf: &NetConf, args: &PodArgs) -> AddNetworkRequest {
    AddNetworkRequest {
        k8s_pod_name: args.pod_name.clone(),
        k8s_pod_namespace: args.pod_namespace.clone(),
        k8s_pod_infra_container_id: args.infra_container_id(&env.container_id).to_string(),
        k8s_pod_uid: args.pod_uid.clone(),
        netns: env
            .netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        if_name: env.ifname.clone(),
        network_name: conf.name.clone(),
        container_id: env.container_id.clone(),
        ..Default::default()
    }
}

/// Turns ipamd's reply into an allocation, or the error to report after releasing it.
fn accept(env: &CniEnv, reply: &AddNetworkReply) -> Result<Allocation, Error> {
    if !reply.success {
        let reason = if reply.failure_reason.is_empty() {
            "no reason given".to_string()
        } else {
            reply.failure_reason.clone()
        };
        return Err(Error::NoAddress {
            ifname: env.ifname.clone(),
            reason,
        });
    }
    let bad = |reason: String| Error::BadReply {
        ifname: env.ifname.clone(),
        reason,
    };
    let meta = reply
        .ip_allocation_metadata
        .first()
        .ok_or_else(|| bad("no address in reply".into()))?;
    let ip: Ipv4Addr = meta
        .i_pv4_addr
        .parse()
        .map_err(|_| bad(format!("IPv4Addr {:?} is not an address", meta.i_pv4_addr)))?;
    if reply.pod_vlan_id != 0 {
        let branch = accept_branch(reply).map_err(bad)?;
        return Ok(Allocation {
            ip,
            device: meta.device_number,
            table: branch_table(branch.vlan),
            branch: Some(branch),
        });
    }
    let table = u32::try_from(meta.route_table_id)
        .ok()
        .filter(|t| *t > 0 && *t != 255)
        .ok_or_else(|| bad(format!("route table {} is not usable", meta.route_table_id)))?;
    Ok(Allocation {
        ip,
        device: meta.device_number,
        table,
        branch: None,
    })
}

/// A branch-ENI reply: VLAN id, branch ENI MAC, subnet gateway and trunk link, all checked
/// before any of them reaches the kernel.
fn accept_branch(reply: &AddNetworkReply) -> Result<Branch, String> {
    let vlan = vlan_id(i64::from(reply.pod_vlan_id)).map_err(|e| format!("PodVlanId: {e}"))?;
    let eni_mac: MacAddr = reply
        .pod_enimac
        .parse()
        .map_err(|_| format!("PodENIMAC {:?} is not a mac address", reply.pod_enimac))?;
    let gateway = subnet_gateway(&reply.pod_eni_subnet_gw, &reply.subnet_cidr)?;
    let parent = u32::try_from(reply.parent_if_index)
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| format!("ParentIfIndex {} is not a link", reply.parent_if_index))?;
    Ok(Branch {
        vlan,
        eni_mac,
        gateway,
        parent,
    })
}

/// Gives the address back after a failed ADD (the runtime sends no DEL for a failed ADD),
/// then returns the original error.
async fn release_after(
    ipamd: &mut IpamdClient,
    env: &CniEnv,
    conf: &NetConf,
    args: &PodArgs,
    err: Error,
) -> Error {
    if matches!(err, Error::NoAddress { .. }) {
        return err;
    }
    let req = DelNetworkRequest {
        k8s_pod_name: args.pod_name.clone(),
        k8s_pod_namespace: args.pod_namespace.clone(),
        k8s_pod_infra_container_id: args.infra_container_id(&env.container_id).to_string(),
        k8s_pod_uid: args.pod_uid.clone(),
        reason: SETUP_FAILED.into(),
        if_name: env.ifname.clone(),
        network_name: conf.name.clone(),
        container_id: env.container_id.clone(),
        ..Default::default()
    };
    match ipamd.del_network(req).await {
        Ok(_) => tracing::info!("address released after failed setup"),
        Err(release) => {
            tracing::warn!(error = %release, "cannot release address after failed setup")
        }
    }
    err
}

/// The result in the layout aws-node uses, with real MACs: host veth, container interface,
/// then a record. A regular pod's record has mac "0" and the ENI device number as sandbox;
/// a branch-ENI pod's has the VLAN id as mac (DEL tears the pod down from that alone), its
/// address names the subnet gateway, and its VLAN link follows with the branch ENI's MAC.
fn result(env: &CniEnv, plan: &Plan, wired: Wired, record: &str) -> CniResult {
    let net = plan.pod();
    let sandbox = env
        .netns
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let mut interfaces = vec![
        Interface {
            name: net.host_veth.clone(),
            mac: wired.host_mac.to_string(),
            ..Default::default()
        },
        Interface {
            name: net.ifname.clone(),
            mac: wired.pod_mac.to_string(),
            mtu: Some(net.mtu),
            sandbox,
            ..Default::default()
        },
    ];
    let gateway = match plan {
        Plan::Regular { device, .. } => {
            interfaces.push(Interface {
                name: record.to_string(),
                mac: "0".into(),
                sandbox: device.to_string(),
                ..Default::default()
            });
            None
        }
        Plan::Branch(b) => {
            interfaces.push(Interface {
                name: record.to_string(),
                mac: b.branch.vlan.to_string(),
                ..Default::default()
            });
            interfaces.push(Interface {
                name: b.vlan_link(),
                mac: b.branch.eni_mac.to_string(),
                ..Default::default()
            });
            Some(b.branch.gateway.into())
        }
    };
    CniResult {
        interfaces,
        ips: vec![IpConfig {
            address: IpNet::V4(Ipv4Net::from(net.ip)),
            gateway,
            interface: Some(1),
        }],
        ..Default::default()
    }
}

/// A chained ADD must pass on what earlier plugins reported.
fn merged(conf: &NetConf, ours: CniResult) -> CniResult {
    match &conf.prev_result {
        Some(prev) => {
            let mut all = prev.clone();
            all.append(ours);
            all
        }
        None => ours,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::netconf::SgEnforcingMode;
    use crate::cni::{Command, Version};
    use crate::commands::Recorded;
    use vpc_cni_proto::IpAllocationMetadata;

    fn env() -> CniEnv {
        CniEnv {
            command: Command::Add,
            container_id: "c-1".into(),
            netns: Some("/var/run/netns/p1".into()),
            ifname: "eth0".into(),
            args: String::new(),
            path: Vec::new(),
        }
    }

    fn branch_reply() -> AddNetworkReply {
        AddNetworkReply {
            success: true,
            ip_allocation_metadata: vec![IpAllocationMetadata {
                i_pv4_addr: "10.0.1.10".into(),
                device_number: -1,
                route_table_id: 0,
                ..Default::default()
            }],
            pod_vlan_id: 3,
            pod_enimac: "02:00:00:00:00:b1".into(),
            pod_eni_subnet_gw: "10.0.1.1".into(),
            parent_if_index: 4,
            subnet_cidr: "10.0.1.0/24".into(),
            ..Default::default()
        }
    }

    fn reason(err: Error) -> String {
        match err {
            Error::BadReply { reason, .. } => reason,
            other => panic!("expected a bad reply, got {other}"),
        }
    }

    #[test]
    fn branch_reply_is_accepted_without_an_eni_table() {
        let alloc = accept(&env(), &branch_reply()).unwrap();
        assert_eq!(alloc.table, 103);
        let branch = alloc.branch.unwrap();
        assert_eq!(branch.vlan, 3);
        assert_eq!(branch.eni_mac.to_string(), "02:00:00:00:00:b1");
        assert_eq!(branch.gateway.to_string(), "10.0.1.1");
        assert_eq!(branch.parent, 4);

        let derived = AddNetworkReply {
            pod_eni_subnet_gw: String::new(),
            ..branch_reply()
        };
        let gateway = accept(&env(), &derived).unwrap().branch.unwrap().gateway;
        assert_eq!(gateway.to_string(), "10.0.1.1");
    }

    #[test]
    fn unusable_branch_replies_name_the_field() {
        type Spoil = fn(&mut AddNetworkReply);
        let cases: [(Spoil, &str); 5] = [
            (
                |r| r.pod_vlan_id = 4095,
                "PodVlanId: vlan id 4095 is outside 1-4094",
            ),
            (
                |r| r.pod_vlan_id = -2,
                "PodVlanId: vlan id -2 is outside 1-4094",
            ),
            (
                |r| r.pod_enimac = "02:00".into(),
                "PodENIMAC \"02:00\" is not a mac address",
            ),
            (|r| r.parent_if_index = 0, "ParentIfIndex 0 is not a link"),
            (
                |r| r.pod_eni_subnet_gw = "gw".into(),
                "PodENISubnetGW \"gw\" is not an IPv4",
            ),
        ];
        for (spoil, want) in cases {
            let mut reply = branch_reply();
            spoil(&mut reply);
            let got = reason(accept(&env(), &reply).err().expect("refused"));
            assert!(got.starts_with(want), "{got}");
        }
    }

    #[test]
    fn regular_reply_keeps_its_eni_table() {
        let reply = AddNetworkReply {
            pod_vlan_id: 0,
            ip_allocation_metadata: vec![IpAllocationMetadata {
                i_pv4_addr: "10.0.0.21".into(),
                device_number: 2,
                route_table_id: 3,
                ..Default::default()
            }],
            ..branch_reply()
        };
        let alloc = accept(&env(), &reply).unwrap();
        assert_eq!((alloc.table, alloc.device, alloc.branch), (3, 2, None));
    }

    fn wired() -> Wired {
        Wired {
            host_mac: "02:00:00:00:00:01".parse().unwrap(),
            pod_mac: "0a:00:00:00:00:02".parse().unwrap(),
        }
    }

    #[test]
    fn branch_result_round_trips_through_every_version() {
        let alloc = accept(&env(), &branch_reply()).unwrap();
        let conf = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"aws-cni"}"#).unwrap();
        let args = PodArgs::parse("K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=api").unwrap();
        let plan = plan(&env(), &conf, &args, &alloc);
        let veth = host_veth_name("vlan", "ns1", "api");
        assert_eq!(plan.pod().host_veth, veth, "strict mode: vlan prefix");
        let ours = result(&env(), &plan, wired(), &record_name("ns1", "api"));
        for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let json = ours.encode(version.parse().unwrap());
            assert_eq!(json["interfaces"][2]["mac"], "3", "{version}");
            assert!(json["interfaces"][2].get("sandbox").is_none(), "{version}");
            assert_eq!(json["interfaces"][3]["name"], "vlan.eth.3");
            assert_eq!(json["ips"][0]["gateway"], "10.0.1.1");
            let (back, _) = CniResult::decode(&json, Version::new(1, 0, 0)).unwrap();
            let rec = Recorded::find(&back, "eth0").unwrap();
            assert_eq!(rec.vlan, Some(3), "{version}");
            assert_eq!(rec.eni_mac(), Some("02:00:00:00:00:b1".parse().unwrap()));
            assert_eq!(rec.gateway, Some("10.0.1.1".parse().unwrap()));
            assert_eq!(rec.host_veth.unwrap().name, veth);
            assert_eq!(rec.ips, ["10.0.1.10".parse::<Ipv4Addr>().unwrap()]);
        }
    }

    #[test]
    fn standard_mode_uses_the_configured_prefix_and_regular_pods_record_the_device() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"aws-cni","vethPrefix":"pod","podSGEnforcingMode":"standard"}"#,
        )
        .unwrap();
        assert_eq!(conf.sg_mode, SgEnforcingMode::Standard);
        let args = PodArgs::parse("K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=api").unwrap();
        let branch = accept(&env(), &branch_reply()).unwrap();
        let plan_b = plan(&env(), &conf, &args, &branch);
        assert_eq!(plan_b.pod().host_veth, host_veth_name("pod", "ns1", "api"));

        let regular = Allocation {
            ip: "10.0.0.21".parse().unwrap(),
            device: 2,
            table: 3,
            branch: None,
        };
        let plan_r = plan(&env(), &conf, &args, &regular);
        let json = result(&env(), &plan_r, wired(), "dummyabc").encode(Version::new(1, 0, 0));
        assert_eq!(json["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(json["interfaces"][2]["mac"], "0");
        assert_eq!(json["interfaces"][2]["sandbox"], "2");
        assert!(json["ips"][0].get("gateway").is_none());
    }
}
