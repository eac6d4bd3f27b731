//! gRPC to ipamd from the harness, over its unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
use vpc_cni_proto::cni_backend_client::CniBackendClient;

/// A gRPC channel over the unix socket at `socket`, each call bounded by `timeout`.
pub async fn unix_channel(socket: &Path, timeout: Duration) -> anyhow::Result<Channel> {
    let socket: PathBuf = socket.to_path_buf();
    // The URI is never dialled: the connector opens the socket.
    let ch = Endpoint::try_from("http://unix.local")?
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let s = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        }))
        .await?;
    Ok(ch)
}

async fn channel(socket: &Path) -> anyhow::Result<Channel> {
    unix_channel(socket, Duration::from_secs(10)).await
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// True when the standard health service on `socket` reports SERVING.
pub fn health_serving(socket: &Path) -> bool {
    block_on(async {
        let Ok(ch) = channel(socket).await else {
            return false;
        };
        let mut client = HealthClient::new(ch);
        match client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
        {
            Ok(r) => r.into_inner().status == ServingStatus::Serving as i32,
            Err(_) => false,
        }
    })
}

/// Runs `f` with a CNIBackend client connected to `socket`.
pub fn with_client<T, F, Fut>(socket: &Path, f: F) -> anyhow::Result<T>
where
    F: FnOnce(CniBackendClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    block_on(async {
        let ch = channel(socket).await?;
        f(CniBackendClient::new(ch)).await
    })
}
