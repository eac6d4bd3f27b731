//! CHECK: compare the live pod and node state with prevResult; report, never repair.

use std::sync::Arc;

use super::add::identity;
use super::{netlink_err, Error, Output, Recorded};
use crate::cni::{CniEnv, Command, NetConf, PodArgs};
use crate::names::host_veth_name;
use crate::netlink::{Netlink, Netns};
use crate::plumbing::{check_pod, Expected, PlumbingError};

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
    let netns = Netns::open(netns_path).map_err(|e| mismatch(e.to_string()))?;
    let pod = Netlink::in_netns(Arc::new(netns)).map_err(netlink_err("open pod netlink"))?;
    let host = Netlink::current().map_err(netlink_err("open host netlink"))?;

    let (namespace, name) = identity(env, &args);
    let want = Expected {
        host_veth: rec.host_veth.as_ref().map_or_else(
            || host_veth_name(&conf.veth_prefix, namespace, name),
            |h| h.name.clone(),
        ),
        host_mac: rec.host_mac(),
        ifname: env.ifname.clone(),
        pod_mac: rec.container_mac(),
        ip,
        table: rec.table,
    };
    // TODO: ask ipamd whether it still holds the allocation; the contract has no RPC for
    // that yet, so a reservation lost on ipamd's side goes unnoticed here.
    match check_pod(&host, &pod, &want).await {
        Ok(()) => Ok(Output::Nothing),
        Err(PlumbingError::Mismatch(what)) => Err(mismatch(what)),
        // State that cannot be read cannot be confirmed either.
        Err(other) => Err(mismatch(other.to_string())),
    }
}
