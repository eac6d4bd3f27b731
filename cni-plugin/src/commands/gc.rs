//! GC: ipamd releases every allocation of this network that is not in the runtime's list of
//! valid attachments; the plugin then removes the node-side leftovers of those.

use vpc_cni_proto::{Attachment, GarbageCollectRequest, ReleasedAttachment};

use super::{ipamd_err, netlink_err, Error, Output};
use crate::cni::NetConf;
use crate::ipamd::IpamdClient;
use crate::names::{host_veth_name, pod_identity};
use crate::netlink::Netlink;
use crate::plumbing::{teardown_host, HostTeardown, PlumbingError, PodAddress};

pub(super) async fn gc(conf: &NetConf) -> Result<Output, Error> {
    if conf.disable_gc {
        tracing::debug!("disableGC set, nothing to do");
        return Ok(Output::Nothing);
    }
    let valid = conf
        .valid_attachments
        .as_ref()
        .ok_or(Error::NoAttachments)?;
    let req = GarbageCollectRequest {
        network_name: conf.name.clone(),
        valid_attachments: valid
            .iter()
            .map(|a| Attachment {
                container_id: a.container_id.clone(),
                if_name: a.ifname.clone(),
            })
            .collect(),
        ..Default::default()
    };
    let mut ipamd = IpamdClient::connect(&conf.ipamd_socket)
        .await
        .map_err(ipamd_err("gc"))?;
    let reply = ipamd.garbage_collect(req).await.map_err(ipamd_err("gc"))?;
    tracing::info!(
        released = reply.released.len(),
        kept = valid.len(),
        "garbage collected"
    );

    let errors = clean_released(conf, &reply.released).await?;
    match errors.len() {
        0 => Ok(Output::Nothing),
        _ => Err(Error::Teardown {
            context: "gc".into(),
            source: PlumbingError::Several(errors),
        }),
    }
}

/// Removes what each released attachment left on the node; the pods' namespaces are gone
/// (that is why the runtime no longer lists them), so only the host side remains.
async fn clean_released(
    conf: &NetConf,
    released: &[ReleasedAttachment],
) -> Result<Vec<PlumbingError>, Error> {
    let host = Netlink::current().map_err(netlink_err("open host netlink"))?;
    let mut errors = Vec::new();
    for gone in released {
        let (namespace, name) = pod_identity(
            &gone.pod_namespace,
            &gone.pod_name,
            &gone.container_id,
            &gone.if_name,
        );
        let plan = HostTeardown {
            host_veths: vec![host_veth_name(&conf.veth_prefix, namespace, name)],
            addresses: gone
                .i_pv4_addr
                .parse()
                .map(|ip| vec![PodAddress { ip, vlan: None }])
                .unwrap_or_default(),
        };
        if let Err(e) = teardown_host(&host, &plan).await {
            errors.push(e);
        }
    }
    Ok(errors)
}
