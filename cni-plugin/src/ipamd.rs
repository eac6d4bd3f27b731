//! Thin gRPC client for ipamd's CNIBackend over its unix socket. Every call has a deadline
//! well under the runtime's CNI timeout, so a stuck daemon cannot hang the kubelet.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request, Status};
use tower::service_fn;
use tracing::Instrument;
use vpc_cni_proto::cni_backend_client::CniBackendClient;
use vpc_cni_proto::{
    AddNetworkReply, AddNetworkRequest, DelNetworkReply, DelNetworkRequest, GarbageCollectReply,
    GarbageCollectRequest, StatusReply, StatusRequest, CONTRACT_VERSION,
};

/// ipamd may wait ~5 s for the warm pool before answering; stay far below kubelet's timeout.
pub const ADD_DEADLINE: Duration = Duration::from_secs(20);
/// Releases, readiness and GC are bookkeeping on ipamd's side.
pub const SHORT_DEADLINE: Duration = Duration::from_secs(5);
/// Connecting a unix socket either works at once or not at all.
const CONNECT_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum IpamdError {
    #[error("ipamd at {socket} unreachable: {reason}")]
    Unreachable { socket: PathBuf, reason: String },
    #[error("ipamd {rpc}: no answer within {}s", .after.as_secs())]
    Deadline { rpc: &'static str, after: Duration },
    #[error("ipamd {rpc}: version mismatch: {message}")]
    VersionMismatch { rpc: &'static str, message: String },
    #[error("ipamd {rpc}: {code:?}: {message}")]
    Rpc {
        rpc: &'static str,
        code: Code,
        message: String,
    },
}

impl IpamdError {
    /// The daemon is not there or not answering: worth retrying later.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            IpamdError::Unreachable { .. } | IpamdError::Deadline { .. }
        )
    }
}

pub struct IpamdClient {
    socket: PathBuf,
    inner: CniBackendClient<Channel>,
}

impl IpamdClient {
    pub async fn connect(socket: &Path) -> Result<IpamdClient, IpamdError> {
        let path = socket.to_path_buf();
        let connector = service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        });
        // The URI is required by the API and never dialled: the connector opens the socket.
        let endpoint = Endpoint::from_static("http://ipamd.sock").connect_timeout(CONNECT_DEADLINE);
        let unreachable = |reason: String| IpamdError::Unreachable {
            socket: socket.to_path_buf(),
            reason,
        };
        let channel =
            tokio::time::timeout(CONNECT_DEADLINE, endpoint.connect_with_connector(connector))
                .await
                .map_err(|_| unreachable("connect timed out".into()))?
                .map_err(|e| unreachable(source_chain(&e)))?;
        Ok(IpamdClient {
            socket: socket.to_path_buf(),
            inner: CniBackendClient::new(channel),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn add_network(
        &mut self,
        mut req: AddNetworkRequest,
    ) -> Result<AddNetworkReply, IpamdError> {
        req.client_version = CONTRACT_VERSION.into();
        let mut client = self.inner.clone();
        call(
            &self.socket,
            "AddNetwork",
            ADD_DEADLINE,
            req,
            |r| async move { client.add_network(r).await },
        )
        .await
    }

    pub async fn del_network(
        &mut self,
        mut req: DelNetworkRequest,
    ) -> Result<DelNetworkReply, IpamdError> {
        req.client_version = CONTRACT_VERSION.into();
        let mut client = self.inner.clone();
        call(
            &self.socket,
            "DelNetwork",
            SHORT_DEADLINE,
            req,
            |r| async move { client.del_network(r).await },
        )
        .await
    }

    pub async fn status(&mut self, network_name: &str) -> Result<StatusReply, IpamdError> {
        let req = StatusRequest {
            client_version: CONTRACT_VERSION.into(),
            network_name: network_name.into(),
        };
        let mut client = self.inner.clone();
        call(
            &self.socket,
            "Status",
            SHORT_DEADLINE,
            req,
            |r| async move { client.status(r).await },
        )
        .await
    }

    pub async fn garbage_collect(
        &mut self,
        mut req: GarbageCollectRequest,
    ) -> Result<GarbageCollectReply, IpamdError> {
        req.client_version = CONTRACT_VERSION.into();
        let mut client = self.inner.clone();
        let rpc = |r| async move { client.garbage_collect(r).await };
        call(&self.socket, "GarbageCollect", SHORT_DEADLINE, req, rpc).await
    }
}

/// Runs one RPC with `deadline` both sent to the server (grpc-timeout) and enforced here.
async fn call<Req, Rep, F, Fut>(
    socket: &Path,
    rpc: &'static str,
    deadline: Duration,
    req: Req,
    f: F,
) -> Result<Rep, IpamdError>
where
    F: FnOnce(Request<Req>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<Rep>, Status>>,
{
    let mut request = Request::new(req);
    request.set_timeout(deadline);
    let span = tracing::debug_span!("rpc", rpc);
    match tokio::time::timeout(deadline, f(request))
        .instrument(span)
        .await
    {
        Err(_) => Err(IpamdError::Deadline {
            rpc,
            after: deadline,
        }),
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) => Err(classify(socket, rpc, deadline, status)),
    }
}

fn classify(socket: &Path, rpc: &'static str, deadline: Duration, status: Status) -> IpamdError {
    let message = status.message().to_string();
    match status.code() {
        Code::FailedPrecondition => IpamdError::VersionMismatch { rpc, message },
        Code::DeadlineExceeded => IpamdError::Deadline {
            rpc,
            after: deadline,
        },
        // Unavailable covers a daemon that went away between connect and call.
        Code::Unavailable => IpamdError::Unreachable {
            socket: socket.to_path_buf(),
            reason: format!("{rpc}: {message}"),
        },
        code => IpamdError::Rpc { rpc, code, message },
    }
}

/// tonic's transport error hides the interesting part (ENOENT, ECONNREFUSED) in its sources.
fn source_chain(err: &dyn std::error::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        parts.push(e.to_string());
        cur = e.source();
    }
    parts.dedup();
    parts.join(": ").to_lowercase()
}
