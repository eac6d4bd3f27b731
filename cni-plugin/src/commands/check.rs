//! CHECK: compare the live pod and node state with prevResult; report, never repair.

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::add::identity;
use super::{netlink_err, Error, Output, Recorded};
use crate::cni::{CniEnv, Command, NetConf, PodArgs};
use crate::names::{branch_mode_of, branch_veth_prefix, host_veth_name};
use crate::netlink::{Netlink, Netns};
use crate::plumbing::{check_branch_pod, check_pod, Expected, ExpectedBranch, PlumbingError};

pub(super) async fn check(env: &CniEnv, conf: &NetConf) -> Result<Output, Error> {
    let args = PodArgs::parse(&env.args)?;
    let prev = conf.prev_result.as_ref().ok_or(Error::NoPrevResult {
        command: Command::Check,
    })?;
    let rec = Recorded::find(prev, &env.ifname)
        .ok_or_else(|| Error::NotInPrevResult(env.ifname.clone()))?;
    let mismatch = |what: String| Error::Mismatch {
        ifname: env.ifname.clone(),
        what,
    };

    let netns_path = env.netns.as_ref().expect("validated: CHECK has CNI_NETNS");
    if rec.container.sandbox != netns_path.display().to_string() {
        return Err(mismatch(format!(
            "prevResult sandbox {:?} is not CNI_NETNS {}",
            rec.container.sandbox,
            netns_path.display()
        )));
    }
    let [ip] = rec.ips[..] else {
        return Err(mismatch(format!(
            "prevResult lists {} IPv4 addresses, expected one",
            rec.ips.len()
        )));
    };
    if let Some(error) = &rec.vlan_error {
        return Err(mismatch(error.clone()));
    }
    let netns = Netns::open(netns_path).map_err(|e| mismatch(e.to_string()))?;
    let pod = Netlink::in_netns(Arc::new(netns)).map_err(netlink_err("open pod netlink"))?;
    let host = Netlink::current().map_err(netlink_err("open host netlink"))?;

    let want = expected(env, conf, &args, &rec, ip);
    // TODO: ask ipamd whether it still holds the allocation; the contract has no RPC for
    // that yet, so a reservation lost on ipamd's side goes unnoticed here.
    match compare(&host, &pod, &rec, want).await {
        Ok(()) => Ok(Output::Nothing),
        Err(PlumbingError::Mismatch(what)) => Err(mismatch(what)),
        // State that cannot be read cannot be confirmed either.
        Err(other) => Err(mismatch(other.to_string())),
    }
}

/// The attachment as prevResult describes it; a host veth it does not name is the one ADD
/// would name under the current config.
fn expected(
    env: &CniEnv,
    conf: &NetConf,
    args: &PodArgs,
    rec: &Recorded,
    ip: Ipv4Addr,
) -> Expected {
    let (namespace, name) = identity(env, args);
    let prefix = match rec.vlan {
        Some(_) => branch_veth_prefix(conf.sg_mode, &conf.veth_prefix),
        None => &conf.veth_prefix,
    };
    Expected {
        host_veth: rec.host_veth.as_ref().map_or_else(
            || host_veth_name(prefix, namespace, name),
            |h| h.name.clone(),
        ),
        host_mac: rec.host_mac(),
        ifname: env.ifname.clone(),
        pod_mac: rec.container_mac(),
        ip,
        table: rec.table,
    }
}

async fn compare(
    host: &Netlink,
    pod: &Netlink,
    rec: &Recorded,
    want: Expected,
) -> Result<(), PlumbingError> {
    let Some(vlan) = rec.vlan else {
        return check_pod(host, pod, &want).await;
    };
    // The mode the pod was wired in, not the one configured now: a mode change applies to
    // new pods only.
    let branch = ExpectedBranch {
        mode: branch_mode_of(&want.host_veth),
        pod: want,
        vlan,
        eni_mac: rec.eni_mac(),
        gateway: rec.gateway,
    };
    check_branch_pod(host, pod, &branch).await
}
