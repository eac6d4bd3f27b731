//! Helpers shared by the integration suites: throwaway network namespaces and `ip -j` reads.
//! The tests change kernel state only inside namespaces they create here.

#![allow(dead_code)]

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// These suites create namespaces and links: without root they cannot run, and say so.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!("this test needs root (network namespaces, netlink); run the suite as root");
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named network namespace (`ip netns add`) removed again on drop.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn new(tag: &str) -> TestNetns {
        require_root();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("vcni{}-{tag}-{n}", std::process::id());
        run("ip", &["netns", "add", &name]);
        run("ip", &["-n", &name, "link", "set", "lo", "up"]);
        TestNetns { name }
    }

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// `ip -n NS -j ARGS...` parsed; an empty answer reads as [].
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-n", &self.name, "-j"];
        full.extend_from_slice(args);
        let out = run("ip", &full);
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {full:?}: bad json {e}: {out}"))
    }

    /// `ip -n NS ARGS...`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Deletes the namespace now (a sandbox that died), leaving drop with nothing to do.
    pub fn delete(&mut self) {
        if !self.name.is_empty() {
            run("ip", &["netns", "del", &self.name]);
            self.name.clear();
        }
    }

    pub fn links(&self) -> Vec<Value> {
        array(self.ip_json(&["link", "show"]))
    }

    pub fn link(&self, name: &str) -> Option<Value> {
        self.links().into_iter().find(|l| l["ifname"] == name)
    }

    pub fn rules(&self) -> Vec<Value> {
        array(self.ip_json(&["rule", "show"]))
    }

    pub fn routes(&self, table: &str) -> Vec<Value> {
        array(self.ip_json(&["route", "show", "table", table]))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

pub fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        other => panic!("expected a json array, got {other}"),
    }
}

/// Runs a helper command, panicking with its stderr when it fails.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Rules whose priority is `prio`, as `ip -j rule` lists them.
pub fn rules_with_priority(rules: &[Value], prio: u64) -> Vec<Value> {
    rules
        .iter()
        .filter(|r| r["priority"] == prio)
        .cloned()
        .collect()
}

pub mod cni;
pub mod server;
