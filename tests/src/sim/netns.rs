//! Named network namespaces and the `ip`/`iptables-legacy` commands the simulator runs inside them.
//! Every command names its namespace: nothing here changes the root namespace.

use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("run {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} in netns {netns} failed: {stderr}")]
    Failed {
        command: String,
        netns: String,
        stderr: String,
    },
    #[error("open netns {0}: {1}")]
    Open(String, #[source] std::io::Error),
    #[error("enter netns {0}: {1}")]
    Enter(String, #[source] nix::Error),
    #[error("bind {addr} in netns {netns}: {source}")]
    Bind {
        addr: SocketAddr,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("write {path} in netns {netns}: {source}")]
    Sysctl {
        path: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("thread for netns {0} panicked")]
    Thread(String),
}

pub fn path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// `ip netns add NAME`
pub fn add(name: &str) -> Result<(), NetnsError> {
    run(Command::new("ip").args(["netns", "add", name]), name, None)
}

/// `ip netns del NAME`
pub fn del(name: &str) -> Result<(), NetnsError> {
    run(Command::new("ip").args(["netns", "del", name]), name, None)
}

/// `ip -n NETNS -batch -` with one command per line (without the leading `ip`).
pub fn ip_batch(netns: &str, commands: &[String]) -> Result<(), NetnsError> {
    if commands.is_empty() {
        return Ok(());
    }
    let script = commands.join("\n") + "\n";
    tracing::debug!(netns, commands = %script, "ip batch");
    let mut cmd = Command::new("ip");
    cmd.args(["-n", netns, "-batch", "-"]);
    run(&mut cmd, netns, Some(&script))
}

/// `ip netns exec NETNS iptables-legacy-restore` with the given tables (each one named in the
/// document is replaced whole).
pub fn iptables_restore(netns: &str, document: &str) -> Result<(), NetnsError> {
    tracing::debug!(netns, document, "iptables-legacy-restore");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", netns, "iptables-legacy-restore"]);
    run(&mut cmd, netns, Some(document))
}

fn run(cmd: &mut Command, netns: &str, stdin: Option<&str>) -> Result<(), NetnsError> {
    let command = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let spawn_err = |source| NetnsError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(());
    }
    Err(NetnsError::Failed {
        command,
        netns: netns.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Runs `f` on a new thread that has entered `netns`; the caller's thread never switches, and
/// sockets `f` opens stay in that namespace for their whole life.
pub fn run_in<T, F>(netns: &str, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetnsError> + Send + 'static,
{
    let name = netns.to_string();
    let file = File::open(path(netns)).map_err(|e| NetnsError::Open(name.clone(), e))?;
    let thread_name = name.clone();
    std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Enter(thread_name, e))?;
        f()
    })
    .join()
    .map_err(|_| NetnsError::Thread(name))?
}

/// A non-blocking TCP listener bound inside `netns`.
pub fn bind(netns: &str, addr: SocketAddr) -> Result<TcpListener, NetnsError> {
    let name = netns.to_string();
    run_in(netns, move || {
        let listener = TcpListener::bind(addr).map_err(|source| NetnsError::Bind {
            addr,
            netns: name.clone(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| NetnsError::Bind {
                addr,
                netns: name,
                source,
            })?;
        Ok(listener)
    })
}

/// Writes a sysctl such as `net/ipv4/ip_forward`; /proc/sys/net belongs to the namespace of the
/// thread that opens it.
pub fn sysctl(netns: &str, key: &str, value: &str) -> Result<(), NetnsError> {
    let (name, path, value) = (
        netns.to_string(),
        format!("/proc/sys/{key}"),
        value.to_string(),
    );
    run_in(netns, move || {
        std::fs::write(&path, &value).map_err(|source| NetnsError::Sysctl {
            path,
            netns: name,
            source,
        })
    })
}
