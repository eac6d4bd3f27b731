//! `ipamd probe`: the liveness and readiness check of the DaemonSet. Asks the standard gRPC
//! health service on ipamd's unix socket and succeeds only on SERVING, within a deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use thiserror::Error;
use tonic::transport::{Endpoint, Uri};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[derive(Debug, Error)]
pub enum ProbeError {
    #[error("ipamd at {socket}: no answer within {}s", .after.as_secs())]
    Deadline { socket: PathBuf, after: Duration },
    #[error("ipamd at {socket} unreachable: {reason}")]
    Unreachable { socket: PathBuf, reason: String },
    #[error("ipamd at {socket} is not serving ({status})")]
    NotServing { socket: PathBuf, status: String },
}

pub async fn check(socket: &Path, deadline: Duration) -> Result<(), ProbeError> {
    match tokio::time::timeout(deadline, ask(socket)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Deadline {
            socket: socket.to_path_buf(),
            after: deadline,
        }),
    }
}

async fn ask(socket: &Path) -> Result<(), ProbeError> {
    let path = socket.to_path_buf();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    let unreachable = |reason: String| ProbeError::Unreachable {
        socket: socket.to_path_buf(),
        reason,
    };
    // The URI is never dialled: the connector opens the socket.
    let channel = Endpoint::from_static("http://ipamd.sock")
        .connect_with_connector(connector)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| unreachable(s.message().to_string()))?;
    let status = reply.into_inner().status;
    if status == ServingStatus::Serving as i32 {
        return Ok(());
    }
    let name = ServingStatus::try_from(status)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| status.to_string());
    Err(ProbeError::NotServing {
        socket: socket.to_path_buf(),
        status: name,
    })
}
