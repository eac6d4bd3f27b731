//! A tiny TCP service for datapath tests, so they do not depend on which netcat is installed:
//! the listener answers every connection with "ok\n"; the client succeeds only when it connects
//! and reads that answer in time. Both run inside an instance's namespace (`ip netns exec`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

pub const ANSWER: &str = "ok\n";

#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error(
        "refusing to listen on {0} outside a named network namespace; run it with ip netns exec, or bind a loopback address"
    )]
    RootNamespace(SocketAddr),
    #[error("listen on {0}: {1}")]
    Listen(SocketAddr, #[source] std::io::Error),
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, #[source] std::io::Error),
    #[error("read answer from {0}: {1}")]
    Read(SocketAddr, #[source] std::io::Error),
    #[error("{0} answered {1:?} instead of {ANSWER:?}")]
    Answer(SocketAddr, String),
}

/// Answers connections on `addr` until killed. Prints `listening <addr>` on stdout once bound,
/// so a caller knows when to connect.
pub fn listen(addr: SocketAddr) -> Result<(), TcpError> {
    if !may_listen(addr, in_named_namespace()) {
        return Err(TcpError::RootNamespace(addr));
    }
    let listener = TcpListener::bind(addr).map_err(|e| TcpError::Listen(addr, e))?;
    println!("listening {addr}");
    let _ = std::io::stdout().flush();
    for conn in listener.incoming() {
        match conn {
            Ok(mut stream) => {
                // A peer that hangs up early is its own problem; keep serving the others.
                let _ = stream.write_all(ANSWER.as_bytes());
            }
            Err(e) => tracing::warn!(error = %e, "accept"),
        }
    }
    Ok(())
}

/// Connects to `addr` and reads the answer, all within `timeout`.
pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<(), TcpError> {
    let deadline = Instant::now() + timeout;
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| TcpError::Connect(addr, e))?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_read_timeout(Some(left))
        .map_err(|e| TcpError::Read(addr, e))?;
    let mut answer = Vec::new();
    stream
        .take(ANSWER.len() as u64)
        .read_to_end(&mut answer)
        .map_err(|e| TcpError::Read(addr, e))?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    if answer != ANSWER {
        return Err(TcpError::Answer(addr, answer));
    }
    Ok(())
}

/// Whether this process runs in a named network namespace (one under /var/run/netns, as
/// `ip netns exec` enters), compared by the namespace's inode.
fn in_named_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |m: std::fs::Metadata| (m.dev(), m.ino());
    let Ok(me) = std::fs::metadata("/proc/self/ns/net").map(id) else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return false;
    };
    entries
        .flatten()
        .any(|e| std::fs::metadata(e.path()).map(id).ok() == Some(me))
}

/// Servers stay off the machine's own interfaces: outside a test namespace only loopback.
fn may_listen(addr: SocketAddr, in_named_ns: bool) -> bool {
    addr.ip().is_loopback() || in_named_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_reads_the_answer_over_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(ANSWER.as_bytes()).unwrap();
        });
        connect(addr, Duration::from_secs(5)).unwrap();
        server.join().unwrap();
    }

    #[test]
    fn client_fails_on_a_closed_port_and_a_wrong_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(b"no\n").unwrap();
        });
        assert!(matches!(
            connect(addr, Duration::from_secs(5)),
            Err(TcpError::Answer(..))
        ));
        server.join().unwrap();
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(matches!(
            connect(closed, Duration::from_secs(5)),
            Err(TcpError::Connect(..))
        ));
    }

    #[test]
    fn listens_off_loopback_only_inside_a_test_namespace() {
        let any: SocketAddr = "0.0.0.0:3306".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:3306".parse().unwrap();
        assert!(!may_listen(any, false));
        assert!(may_listen(lo, false));
        assert!(may_listen(any, true));
    }
}
