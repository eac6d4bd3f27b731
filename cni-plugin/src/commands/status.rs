//! STATUS: ready iff ipamd would serve an ADD now. Asked afresh every time; nothing cached.

use super::{Error, Output};
use crate::cni::NetConf;
use crate::ipamd::IpamdClient;

pub(super) async fn status(conf: &NetConf) -> Result<Output, Error> {
    let reply = async {
        let mut ipamd = IpamdClient::connect(&conf.ipamd_socket).await?;
        ipamd.status(&conf.name).await
    }
    .await
    // Whatever keeps us from asking (socket gone, wrong version, timeout) also keeps an ADD
    // from succeeding: that is "not available", code 50.
    .map_err(|e| Error::NotReady(e.to_string()))?;
    if reply.ready {
        tracing::debug!(available = reply.available_addresses, "ready");
        Ok(Output::Nothing)
    } else {
        let reason = if reply.reason.is_empty() {
            "ipamd reports not ready".into()
        } else {
            reply.reason
        };
        Err(Error::NotReady(reason))
    }
}
