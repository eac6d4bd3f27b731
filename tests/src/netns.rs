//! Network namespaces the tests create and remove, and `ip -j` views into them.
//!
//! Every kernel change a test makes happens in a namespace from here; the root namespace is
//! only ever read.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};
use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails unless the process can create namespaces; tests that need it call this first so a
/// run without root fails loudly instead of passing.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces and netlink); run it as root"
    );
}

/// A named namespace (`ip netns add`) deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}-{}-{}", std::process::id(), tag, n);
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.exec_ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<Output> {
        exec_in(&self.name, argv)
    }

    pub fn exec_ok(&self, argv: &[&str]) -> anyhow::Result<String> {
        exec_in_ok(&self.name, argv)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

pub fn exec_in(netns: &str, argv: &[&str]) -> anyhow::Result<Output> {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .output()
        .with_context(|| format!("run {argv:?} in {netns}"))
}

pub fn exec_in_ok(netns: &str, argv: &[&str]) -> anyhow::Result<String> {
    let out = exec_in(netns, argv)?;
    if !out.status.success() {
        bail!(
            "{argv:?} in {netns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// `ip -j <args>` inside `netns`, parsed; an empty answer is an empty array.
pub fn ip_json(netns: &str, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut argv = vec!["ip", "-j"];
    argv.extend_from_slice(args);
    let text = exec_in_ok(netns, &argv)?;
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(&text).with_context(|| format!("parse ip {args:?}"))?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Names of the namespaces registered under /var/run/netns.
pub fn list() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a ping from `netns` to `dst` gets an answer (two tries, short timeout).
pub fn ping(netns: &str, dst: &str) -> bool {
    exec_in(
        netns,
        &["ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", dst],
    )
    .map(|o| o.status.success())
    .unwrap_or(false)
}

/// What the root namespace holds; taken before and after a scenario to prove it left nothing.
#[derive(Debug, PartialEq, Eq)]
pub struct RootSnapshot {
    pub links: Vec<String>,
    pub rules: Vec<String>,
    pub routes: Vec<String>,
    pub netns: Vec<String>,
}

impl RootSnapshot {
    pub fn take() -> anyhow::Result<Self> {
        let lines = |args: &[&str]| -> anyhow::Result<Vec<String>> {
            let out = Command::new("ip").args(args).output()?;
            let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect();
            v.sort();
            Ok(v)
        };
        let mut netns = list();
        netns.sort();
        Ok(Self {
            links: lines(&["-o", "link", "show"])?
                .into_iter()
                .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_string())
                .collect(),
            rules: lines(&["rule", "show"])?,
            routes: lines(&["route", "show", "table", "all"])?,
            netns,
        })
    }

    /// Lines of `after` that were not in `self`, by kind.
    pub fn added_in(&self, after: &RootSnapshot) -> Vec<String> {
        let mut added = Vec::new();
        let diff = |kind: &str, a: &[String], b: &[String], out: &mut Vec<String>| {
            for x in b.iter().filter(|x| !a.contains(x)) {
                out.push(format!("{kind}: {x}"));
            }
        };
        diff("link", &self.links, &after.links, &mut added);
        diff("rule", &self.rules, &after.rules, &mut added);
        diff("route", &self.routes, &after.routes, &mut added);
        diff("netns", &self.netns, &after.netns, &mut added);
        added
    }
}

/// Moves the calling thread into `netns`. Only for a thread made for this purpose: it never
/// switches back.
pub fn enter(netns: &str) -> anyhow::Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{netns}"))
        .with_context(|| format!("open netns {netns}"))?;
    nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("enter netns {netns}"))?;
    Ok(())
}

/// Ping from a namespace given by path (as containerd names pod namespaces).
pub fn ping_from_path(netns_path: &str, dst: &str) -> bool {
    Command::new("nsenter")
        .arg(format!("--net={netns_path}"))
        .args(["ping", "-c", "2", "-i", "0.2", "-W", "1", "-q", dst])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A TCP server inside a namespace that accepts every connection and answers "ok\n" followed
/// by the address it saw the connection come from and "\n", until dropped. Stands in for a VPC
/// service (a database) in reachability checks; the address tells which source a connection
/// arrived with (after any SNAT on the way). Clients that read only "ok\n" need nothing more.
pub struct TcpService {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpService {
    pub fn start(netns: &str, port: u16) -> anyhow::Result<Self> {
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let netns = netns.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let bound = enter(&netns).and_then(|_| {
                let l = std::net::TcpListener::bind(("0.0.0.0", port))?;
                l.set_nonblocking(true)?;
                Ok(l)
            });
            let listener = match bound {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, peer)) => {
                        use std::io::Write;
                        let _ = s.write_all(format!("ok\n{}\n", peer.ip()).as_bytes());
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        });
        rx.recv()??;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for TcpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether a TCP connection from `netns` to `addr:port` is accepted and answered in time.
/// Reads only the "ok\n" a TcpService starts its answer with.
pub fn tcp_reaches(netns: &str, addr: &str, port: u16) -> bool {
    let (netns, addr) = (netns.to_string(), addr.to_string());
    std::thread::spawn(move || -> anyhow::Result<bool> {
        use std::io::Read;
        enter(&netns)?;
        let sa: std::net::SocketAddr = format!("{addr}:{port}").parse()?;
        let timeout = std::time::Duration::from_secs(2);
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&sa, timeout) else {
            return Ok(false);
        };
        s.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 3];
        Ok(s.read_exact(&mut buf).is_ok() && &buf == b"ok\n")
    })
    .join()
    .unwrap_or(Ok(false))
    .unwrap_or(false)
}

/// The source address a TcpService at `addr:port` saw when `netns` connected to it; None when
/// the connection or the answer failed or came late.
pub fn tcp_source(netns: &str, addr: &str, port: u16) -> Option<std::net::IpAddr> {
    let (netns, addr) = (netns.to_string(), addr.to_string());
    std::thread::spawn(move || -> anyhow::Result<Option<std::net::IpAddr>> {
        use std::io::Read;
        enter(&netns)?;
        let sa: std::net::SocketAddr = format!("{addr}:{port}").parse()?;
        let timeout = std::time::Duration::from_secs(2);
        let Ok(s) = std::net::TcpStream::connect_timeout(&sa, timeout) else {
            return Ok(None);
        };
        s.set_read_timeout(Some(timeout))?;
        // The service closes after its answer; 64 bytes hold "ok\n" and any IPv6 address.
        let mut answer = String::new();
        s.take(64).read_to_string(&mut answer)?;
        Ok(parse_answer(&answer))
    })
    .join()
    .ok()
    .and_then(Result::ok)
    .flatten()
}

fn parse_answer(answer: &str) -> Option<std::net::IpAddr> {
    let peer = answer.strip_prefix("ok\n")?.strip_suffix('\n')?;
    peer.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_names_the_peer() {
        assert_eq!(
            parse_answer("ok\n10.0.0.10\n"),
            Some("10.0.0.10".parse().unwrap())
        );
        assert_eq!(parse_answer("ok\n::1\n"), Some("::1".parse().unwrap()));
        assert_eq!(parse_answer("ok\n"), None);
        assert_eq!(parse_answer("ok\n10.0.0.10"), None);
        assert_eq!(parse_answer("no\n10.0.0.10\n"), None);
    }
}
