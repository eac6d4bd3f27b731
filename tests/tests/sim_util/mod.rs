//! Shared by the vpc-sim suites: start the simulator binary on a scenario, talk to it with
//! aws-sdk-ec2, and look into its namespaces.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_ec2::config::retry::RetryConfig;
use aws_sdk_ec2::config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use harness::sim::SimInfo;
use serde_json::{json, Value};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "vpc-sim tests need root (network namespaces, veth, iptables-legacy); run them as root"
    );
}

/// The scenario most tests use: two subnets in us-west-2a, one in 2b; a t3.small node
/// (3 ENIs, 4 addresses each), an m5.large node and a host in the other zone. Both groups admit
/// everything from the VPC, so security groups stay out of the way of these tests.
pub fn scenario() -> Value {
    json!({
        "region": "us-west-2",
        "vpc": {"id": "vpc-0123456789abcdef0", "cidr": "10.0.0.0/16"},
        "subnets": [
            {"id": "subnet-a", "cidr": "10.0.0.0/24", "az": "us-west-2a"},
            {"id": "subnet-tiny", "cidr": "10.0.9.0/28", "az": "us-west-2a"},
            {"id": "subnet-b", "cidr": "10.0.1.0/24", "az": "us-west-2b"}
        ],
        "securityGroups": [
            {"id": "sg-0aaaaaaaaaaaaaaa1", "name": "nodes",
             "ingress": [{"protocol": "-1", "cidrs": ["10.0.0.0/16"]}]},
            {"id": "sg-0bbbbbbbbbbbbbbb1", "name": "db",
             "ingress": [{"protocol": "-1", "cidrs": ["10.0.0.0/16"]}]}
        ],
        "instances": [
            {"id": "i-small", "type": "t3.small", "subnet": "subnet-a",
             "securityGroups": ["sg-0aaaaaaaaaaaaaaa1"], "role": "node", "privateIp": "10.0.0.10"},
            {"id": "i-large", "type": "m5.large", "subnet": "subnet-a",
             "securityGroups": ["sg-0aaaaaaaaaaaaaaa1"], "role": "node", "privateIp": "10.0.0.11"},
            {"id": "i-db", "type": "t3.small", "subnet": "subnet-b",
             "securityGroups": ["sg-0bbbbbbbbbbbbbbb1"], "role": "host", "privateIp": "10.0.1.20"}
        ]
    })
}

pub struct Sim {
    pub info: SimInfo,
    pub prefix: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Sim {
    pub fn start(scenario: &Value) -> Sim {
        let prefix = format!(
            "vst{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        Self::start_with_prefix(scenario, &prefix).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts vpc-sim and waits for the JSON line it prints when ready.
    pub fn start_with_prefix(scenario: &Value, prefix: &str) -> Result<Sim, String> {
        require_root();
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("scenario.json");
        std::fs::write(&file, scenario.to_string()).expect("write scenario");
        let log_path = dir.path().join("vpc-sim.log");
        let log = std::fs::File::create(&log_path).expect("create log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_vpc-sim"))
            .arg("--scenario")
            .arg(&file)
            .arg("--run-dir")
            .arg(dir.path())
            .arg("--netns-prefix")
            .arg(prefix)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn vpc-sim");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        if line.trim().is_empty() {
            child.wait().expect("wait vpc-sim");
            return Err(std::fs::read_to_string(&log_path).unwrap_or_default());
        }
        let info: SimInfo = serde_json::from_str(&line).expect("sim info line");
        Ok(Sim {
            info,
            prefix: prefix.to_string(),
            dir,
            child: Some(child),
        })
    }

    pub fn netns(&self, instance: &str) -> String {
        format!("{}-{instance}", self.prefix)
    }

    pub fn instance(&self, id: &str) -> &harness::sim::InstanceInfo {
        self.info
            .instances
            .iter()
            .find(|i| i.id == id)
            .expect("instance in sim.json")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vpc-sim.log")).unwrap_or_default()
    }

    pub fn sim_json(&self) -> PathBuf {
        self.dir.path().join("sim.json")
    }

    /// Sends SIGTERM and waits (up to 20 s) for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("simulator still running");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal vpc-sim");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait vpc-sim") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("vpc-sim did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        ec2_client(&self.info.ec2_endpoint, RetryConfig::standard())
    }

    pub fn ec2_no_retry(&self) -> aws_sdk_ec2::Client {
        ec2_client(&self.info.ec2_endpoint, RetryConfig::disabled())
    }

    pub fn control(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        harness::vpc::http_json(&self.info.ec2_endpoint, method, path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if self.child.is_some() {
            let status = self.stop();
            if !std::thread::panicking() {
                assert!(status.success(), "vpc-sim exited with {status}");
            }
        }
    }
}

pub fn ec2_client(endpoint: &str, retry: RetryConfig) -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-west-2"))
        .credentials_provider(Credentials::new(
            "AKIDSIMTEST",
            "secret",
            None,
            None,
            "test",
        ))
        .endpoint_url(endpoint)
        .retry_config(retry)
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(60))
                .build(),
        )
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

/// The EC2 error code of a failed call; panics when the call succeeded.
pub fn code<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug>(
    r: Result<T, E>,
) -> String {
    match r {
        Ok(v) => panic!("call succeeded but an error was expected: {v:?}"),
        Err(e) => e
            .code()
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no error code in {e:?}")),
    }
}

/// Runs `f` on a thread inside `netns`; sockets it opens live there.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(format!("/var/run/netns/{netns}")).expect("open netns");
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// Runs a command in `netns` and returns its output.
pub fn exec(netns: &str, argv: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", netns])
        .args(argv)
        .output()
        .expect("run ip netns exec")
}

pub fn exec_ok(netns: &str, argv: &[&str]) -> String {
    let out = exec(netns, argv);
    assert!(
        out.status.success(),
        "{argv:?} in {netns} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -j link show` in `netns`.
pub fn links(netns: &str) -> Vec<Value> {
    let text = exec_ok(netns, &["ip", "-j", "link", "show"]);
    serde_json::from_str(&text).expect("ip -j link")
}

pub fn link_with_mac(netns: &str, mac: &str) -> Option<Value> {
    links(netns).into_iter().find(|l| l["address"] == mac)
}

pub fn ipv4_addrs(netns: &str, ifname: &str) -> Vec<String> {
    let text = exec_ok(netns, &["ip", "-j", "-4", "addr", "show", "dev", ifname]);
    let v: Value = serde_json::from_str(&text).expect("ip -j addr");
    v[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| i["local"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `ip -j route show` in `netns`, as destination strings.
pub fn route_dsts(netns: &str) -> Vec<String> {
    let text = exec_ok(netns, &["ip", "-j", "route", "show"]);
    let v: Vec<Value> = serde_json::from_str(&text).expect("ip -j route");
    v.iter()
        .map(|r| r["dst"].as_str().unwrap_or("").to_string())
        .collect()
}

pub fn ping(netns: &str, dst: Ipv4Addr, src: Option<Ipv4Addr>) -> bool {
    let dst = dst.to_string();
    let src = src.map(|s| s.to_string());
    let mut argv = vec!["ping", "-c", "1", "-W", "1"];
    if let Some(src) = &src {
        argv.extend(["-I", src.as_str()]);
    }
    argv.push(&dst);
    exec(netns, &argv).status.success()
}

/// Polls `f` every 50 ms until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// Packets counted by the fabric's firewall rule carrying `comment` (iptables-legacy).
pub fn fabric_counter(fabric_ns: &str, comment: &str) -> u64 {
    let text = exec_ok(fabric_ns, &["iptables-legacy-save", "-c", "-t", "filter"]);
    let needle = format!("--comment \"{comment}\"");
    let line = text
        .lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no rule with comment {comment:?} in\n{text}"));
    let counters = line.trim_start_matches('[').split(']').next().unwrap_or("");
    counters
        .split(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet counter in {line:?}"))
}

/// A scenario from conf/examples, e.g. "vpc-sgp.json".
pub fn example(name: &str) -> Value {
    let path = format!("{}/../conf/examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"))
}

/// `vpc-sim tcp-listen` running inside an instance's namespace until dropped.
pub struct Listener {
    child: Child,
}

impl Listener {
    pub fn start(netns: &str, port: u16) -> Listener {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, env!("CARGO_BIN_EXE_vpc-sim")])
            .args(["tcp-listen", "--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vpc-sim tcp-listen");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("listener stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        assert!(
            line.starts_with("listening "),
            "tcp-listen on port {port} in {netns} did not start: {line:?}"
        );
        Listener { child }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `vpc-sim tcp-connect` from `netns` gets the listener's answer within `timeout_ms`.
pub fn tcp_ok(netns: &str, target: &str, timeout_ms: u64) -> bool {
    let timeout = timeout_ms.to_string();
    let out = Command::new("ip")
        .args(["netns", "exec", netns, env!("CARGO_BIN_EXE_vpc-sim")])
        .args(["tcp-connect", target, "--timeout-ms", &timeout])
        .output()
        .expect("run vpc-sim tcp-connect");
    out.status.success()
}

/// ModifyNetworkInterfaceAttribute: replaces the ENI's security groups.
pub async fn set_groups(ec2: &aws_sdk_ec2::Client, eni: &str, groups: &[&str]) {
    let mut req = ec2
        .modify_network_interface_attribute()
        .network_interface_id(eni);
    for g in groups {
        req = req.groups(*g);
    }
    req.send().await.expect("modify groups");
}
