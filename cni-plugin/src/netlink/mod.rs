//! Route netlink, one small function per kernel effect.
//!
//! Every request goes through [`Netlink::request`] or [`Netlink::dump`], which turn kernel
//! NACKs into [`NetlinkError::Kernel`] with the errno kept (so callers can treat EEXIST or
//! ENOENT as success where that is the intent) and retry dumps the kernel flags as
//! interrupted (NLM_F_DUMP_INTR: the table changed while it was being read).
//!
//! A [`Netlink`] is bound to one network namespace for its whole life: the namespace of the
//! calling thread ([`Netlink::current`]) or one entered on a dedicated thread just to open
//! the socket ([`Netlink::in_netns`]).

mod addr;
mod link;
mod neigh;
pub mod netns;
mod route;
mod rule;

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::Arc;

use futures::StreamExt;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
use rtnetlink::Handle;

pub use addr::Address;
pub use link::{Link, MacAddr, VethPair, VlanLink};
pub use neigh::{Neighbour, NeighbourState};
pub use netns::{Netns, NetnsError};
pub use route::{Route, RouteScope, RT_TABLE_MAIN};
pub use rule::Rule;

/// How often a dump is retried when the kernel reports it was interrupted.
const DUMP_ATTEMPTS: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("open netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("open netlink socket: no tokio runtime on this thread")]
    NoRuntime,
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{op}: {}", errno_text(*.errno))]
    Kernel { op: String, errno: i32 },
    #[error("{op}: netlink connection closed")]
    Closed { op: String },
    #[error("{op}: table kept changing while being read ({attempts} tries)")]
    DumpInterrupted { op: String, attempts: u32 },
    #[error("{op}: unexpected reply from the kernel")]
    Unexpected { op: String },
}

impl NetlinkError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The object already exists (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object is not there. The kernel says so in several ways: ENOENT (rules, neighbours),
    /// ESRCH (routes), ENODEV (links), EADDRNOTAVAIL (addresses).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENOENT | libc::ESRCH | libc::ENODEV | libc::EADDRNOTAVAIL)
        )
    }
}

/// "file exists" rather than "File exists (os error 17)": errors read as one lower-case path.
fn errno_text(errno: i32) -> String {
    let desc = nix::errno::Errno::from_raw(errno).desc();
    let mut chars = desc.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("errno {errno}"),
    }
}

/// A route-netlink connection bound to one network namespace.
pub struct Netlink {
    handle: Handle,
    netns: Option<Arc<Netns>>,
    connection: tokio::task::JoinHandle<()>,
}

impl Netlink {
    /// A socket in the calling thread's namespace. Must be called inside a tokio runtime.
    pub fn current() -> Result<Netlink, NetlinkError> {
        let socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        Netlink::from_socket(socket, None)
    }

    /// A socket in `netns`, opened on a short-lived thread that enters the namespace. The
    /// runtime thread never changes namespace. Must be called inside a tokio runtime.
    pub fn in_netns(netns: Arc<Netns>) -> Result<Netlink, NetlinkError> {
        let socket = netns
            .run_here(|| Socket::new(NETLINK_ROUTE))?
            .map_err(NetlinkError::Socket)?;
        Netlink::from_socket(socket, Some(netns))
    }

    fn from_socket(socket: Socket, netns: Option<Arc<Netns>>) -> Result<Netlink, NetlinkError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(NetlinkError::NoRuntime);
        }
        // SAFETY: the descriptor was just taken out of a valid, owned netlink socket.
        let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
        let (connection, handle, _) = rtnetlink::from_socket(socket);
        let connection = tokio::spawn(connection);
        Ok(Netlink {
            handle,
            netns,
            connection,
        })
    }

    /// The namespace this connection was opened in; None for the process's own.
    pub fn netns(&self) -> Option<&Arc<Netns>> {
        self.netns.as_ref()
    }

    /// Sends one change request and waits for the kernel's ACK or NACK.
    async fn request(
        &self,
        op: impl Fn() -> String,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetlinkError> {
        let mut req = NetlinkMessage::from(message);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut replies = handle
            .request(req)
            .map_err(|_| NetlinkError::Closed { op: op() })?;
        while let Some(reply) = replies.next().await {
            if let NetlinkPayload::Error(err) = reply.payload {
                return match err.code {
                    Some(code) => Err(NetlinkError::Kernel {
                        op: op(),
                        errno: -code.get(),
                    }),
                    None => Ok(()),
                };
            }
        }
        Ok(())
    }

    /// Reads a whole table, retrying when the kernel flags the dump as interrupted.
    async fn dump(
        &self,
        op: impl Fn() -> String,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        for _ in 0..DUMP_ATTEMPTS {
            match self.dump_once(&op, message.clone()).await? {
                Some(messages) => return Ok(messages),
                None => tracing::debug!(op = op(), "dump interrupted, retrying"),
            }
        }
        Err(NetlinkError::DumpInterrupted {
            op: op(),
            attempts: DUMP_ATTEMPTS,
        })
    }

    /// One dump; None when it was interrupted.
    async fn dump_once(
        &self,
        op: &impl Fn() -> String,
        message: RouteNetlinkMessage,
    ) -> Result<Option<Vec<RouteNetlinkMessage>>, NetlinkError> {
        let mut req = NetlinkMessage::from(message);
        req.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut handle = self.handle.clone();
        let mut replies = handle
            .request(req)
            .map_err(|_| NetlinkError::Closed { op: op() })?;
        let mut out = Vec::new();
        let mut interrupted = false;
        while let Some(reply) = replies.next().await {
            interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
            match reply.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Error(err) => match err.code.map(|c| -c.get()) {
                    None => {}
                    Some(libc::EINTR) => interrupted = true,
                    Some(errno) => return Err(NetlinkError::Kernel { op: op(), errno }),
                },
                _ => {}
            }
        }
        Ok((!interrupted).then_some(out))
    }

    /// Asks for one object; Ok(None) when the kernel says it does not exist.
    async fn get_one(
        &self,
        op: impl Fn() -> String,
        message: RouteNetlinkMessage,
    ) -> Result<Option<RouteNetlinkMessage>, NetlinkError> {
        let mut req = NetlinkMessage::from(message);
        req.header.flags = NLM_F_REQUEST;
        let mut handle = self.handle.clone();
        let mut replies = handle
            .request(req)
            .map_err(|_| NetlinkError::Closed { op: op() })?;
        let mut found = None;
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(inner) => found = Some(inner),
                NetlinkPayload::Error(err) => match err.code.map(|c| -c.get()) {
                    None => {}
                    Some(errno) => {
                        let err = NetlinkError::Kernel { op: op(), errno };
                        return if err.is_not_found() {
                            Ok(None)
                        } else {
                            Err(err)
                        };
                    }
                },
                _ => {}
            }
        }
        Ok(found)
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Treats "already exists" as done, for requests whose goal is a state, not an action.
fn exists_ok(result: Result<(), NetlinkError>) -> Result<(), NetlinkError> {
    match result {
        Err(e) if e.is_exists() => Ok(()),
        other => other,
    }
}

/// Turns "not found" into Ok(false): deleting what is already gone is success.
fn gone_ok(result: Result<(), NetlinkError>) -> Result<bool, NetlinkError> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}
