//! Connections as the kubelet and node-local agents make them, for the datapath checks of
//! branch pods: many short probes in a row, and a connection from a chosen source address.
//! Each runs on a thread of its own that enters the namespace once.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use nix::sys::time::TimeVal;

use crate::netns::enter;

/// The answer of the harness's TCP services starts with this.
const OK: &[u8; 3] = b"ok\n";

/// The outcome of a run of probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probes {
    pub sent: usize,
    pub failed: usize,
}

/// Opens `count` connections to `target` from `netns` one after another, each with
/// `timeout` to connect and read the answer, as a liveness probe does. Stops early once
/// `give_up` of them failed, so a broken path costs seconds, not hours.
pub fn probe_many(
    netns: &str,
    target: SocketAddr,
    count: usize,
    timeout: Duration,
    give_up: usize,
) -> anyhow::Result<Probes> {
    let netns = netns.to_string();
    std::thread::spawn(move || -> anyhow::Result<Probes> {
        enter(&netns)?;
        let mut done = Probes { sent: 0, failed: 0 };
        while done.sent < count && done.failed < give_up {
            done.sent += 1;
            if !answered(TcpStream::connect_timeout(&target, timeout), timeout) {
                done.failed += 1;
            }
        }
        Ok(done)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("probe thread panicked"))?
}

/// Whether a connection from `source` (an address of `netns`) to `target` is accepted and
/// answered within `timeout`.
pub fn reaches_from(
    netns: &str,
    source: Ipv4Addr,
    target: SocketAddrV4,
    timeout: Duration,
) -> bool {
    let netns = netns.to_string();
    std::thread::spawn(move || -> anyhow::Result<bool> {
        enter(&netns)?;
        Ok(answered(connect_from(source, target, timeout), timeout))
    })
    .join()
    .ok()
    .and_then(Result::ok)
    .unwrap_or(false)
}

fn connect_from(
    source: Ipv4Addr,
    target: SocketAddrV4,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // A blocking connect gives up after the send timeout.
    let limit = TimeVal::new(timeout.as_secs() as i64, timeout.subsec_micros() as i64);
    socket::setsockopt(&fd, sockopt::SendTimeout, &limit)?;
    socket::bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(SocketAddrV4::new(source, 0)),
    )?;
    socket::connect(fd.as_raw_fd(), &SockaddrIn::from(target))?;
    Ok(TcpStream::from(fd))
}

fn answered(stream: std::io::Result<TcpStream>, timeout: Duration) -> bool {
    let Ok(mut stream) = stream else {
        return false;
    };
    let mut buf = [0u8; 3];
    stream.set_read_timeout(Some(timeout)).is_ok()
        && stream.read_exact(&mut buf).is_ok()
        && &buf == OK
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn answered_needs_the_ok() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for reply in [&b"ok\n10.0.0.1\n"[..], b"no\n"] {
                let (mut s, _) = listener.accept().unwrap();
                s.write_all(reply).unwrap();
            }
        });
        let t = Duration::from_secs(5);
        assert!(answered(TcpStream::connect(addr), t));
        assert!(!answered(TcpStream::connect(addr), t));
        server.join().unwrap();
        let SocketAddr::V4(v4) = addr else {
            unreachable!()
        };
        assert!(
            !answered(connect_from(Ipv4Addr::LOCALHOST, v4, t), t),
            "nobody listens any more"
        );
    }

    #[test]
    fn connect_from_uses_the_source() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(target) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let source: Ipv4Addr = "127.0.0.7".parse().unwrap();
        let client = connect_from(source, target, Duration::from_secs(5)).unwrap();
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(source));
        drop(client);
    }
}
