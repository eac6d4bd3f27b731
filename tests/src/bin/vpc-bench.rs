//! `make bench`: ADD and DEL latency of vpc-cni (warm pool, real ipamd on a simulated node)
//! against the named baseline `ptp+host-local` (Debian's reference plugins), in the same run on
//! the same machine. Prints medians and p90s and the ratio; exits non-zero when a warm ADD of
//! ours is not under half of the baseline's.
//!
//!   vpc-bench [ITERATIONS] [PLUGIN_BINARY]

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use harness::bench::{summary, time_verb};
use harness::netns::{enter, require_root, Netns};
use harness::node::Node;
use serde_json::json;

fn main() -> anyhow::Result<()> {
    require_root();
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(30);
    let ours = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| harness::bins::path("vpc-cni"));

    // On a node the checkpoint lives in /var/run/aws-node, a tmpfs; /dev/shm is this
    // machine's tmpfs. On the test disk each atomic write's two fsyncs alone cost ~8 ms.
    let store = tempfile::Builder::new()
        .prefix("vpc-bench")
        .tempdir_in("/dev/shm")?;
    let checkpoint = store.path().join("ipam.json").display().to_string();
    let node = Node::start(&[
        ("WARM_IP_TARGET", "5"),
        ("MINIMUM_IP_TARGET", "10"),
        ("AWS_VPC_K8S_CNI_BACKING_STORE", &checkpoint),
    ])?;
    let ours_conf = node.conf.clone();
    let baseline_node = Netns::new("bench-base")?;
    let data_dir = tempfile::tempdir()?;
    let baseline_conf = json!({
        "cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp",
        "ipam": {"type": "host-local", "subnet": "10.250.0.0/16",
                 "dataDir": data_dir.path().display().to_string()}
    });

    let plans = [
        Plan::new("vpc-cni", ours.clone(), node.netns(), ours_conf)?,
        Plan::new(
            "ptp+host-local",
            PathBuf::from("/usr/lib/cni/ptp"),
            &baseline_node.name,
            baseline_conf,
        )?,
    ];
    let rows = measure(&plans, n)?;
    let (ours_add, base_add) = (rows[0].1 .0, rows[1].1 .0);
    let (ours_del, base_del) = (rows[0].2 .0, rows[1].2 .0);
    println!(
        "vpc-cni / ptp+host-local: ADD {:.2}x, DEL {:.2}x",
        ours_add / base_add,
        ours_del / base_del
    );
    if ours_add >= base_add / 2.0 {
        anyhow::bail!(
            "warm ADD median {ours_add:.2} ms is not under half the baseline's {base_add:.2} ms"
        );
    }
    Ok(())
}

/// Median and p90 of ADD and of DEL, in milliseconds.
type Row = (&'static str, (f64, f64), (f64, f64));

/// Times `n` rounds and prints one row per plugin. Round by round, each plugin's ADD and
/// DEL in turn, so a slow spell of the machine falls on both alike instead of on whichever
/// ran second.
fn measure(plans: &[Plan], n: usize) -> anyhow::Result<Vec<Row>> {
    let mut samples = vec![(Vec::new(), Vec::new()); plans.len()];
    for i in 0..n {
        for (plan, (adds, dels)) in plans.iter().zip(samples.iter_mut()) {
            let (add, del) = plan.round(i)?;
            adds.push(add);
            dels.push(del);
        }
    }
    let mut rows = Vec::new();
    for (plan, (adds, dels)) in plans.iter().zip(samples) {
        let (add, del) = (summary(adds), summary(dels));
        println!(
            "{:<16} ADD median {:6.2} ms p90 {:6.2} ms   DEL median {:6.2} ms p90 {:6.2} ms",
            plan.name, add.0, add.1, del.0, del.1
        );
        rows.push((plan.name, add, del));
    }
    Ok(rows)
}

type Timings = anyhow::Result<(Duration, Duration)>;

/// One plugin under test: a thread inside its node namespace that times ADD then DEL of one
/// pod per request, one process per verb, each pod in a fresh namespace.
struct Plan {
    name: &'static str,
    requests: mpsc::Sender<(usize, mpsc::Sender<Timings>)>,
}

impl Plan {
    fn new(
        name: &'static str,
        bin: PathBuf,
        node_ns: &str,
        conf: serde_json::Value,
    ) -> anyhow::Result<Self> {
        let node_ns = node_ns.to_string();
        let (requests, incoming) = mpsc::channel::<(usize, mpsc::Sender<Timings>)>();
        // The plugin processes start from a thread inside the node namespace, exactly as
        // under a runtime, without `ip netns exec` in the measurement.
        std::thread::spawn(move || {
            if let Err(e) = enter(&node_ns) {
                for (_, reply) in incoming {
                    let _ = reply.send(Err(anyhow::anyhow!("enter {node_ns}: {e}")));
                }
                return;
            }
            for (i, reply) in incoming {
                let _ = reply.send(time_pod(&bin, &conf, name, i));
            }
        });
        Ok(Plan { name, requests })
    }

    fn round(&self, i: usize) -> Timings {
        let (tx, rx) = mpsc::channel();
        self.requests.send((i, tx))?;
        rx.recv()?
    }
}

fn time_pod(bin: &std::path::Path, conf: &serde_json::Value, name: &str, i: usize) -> Timings {
    let pod = Netns::new(&format!("b{}{i}", &name[..1]))?;
    let path = pod.path();
    let id = format!("bench{i:04}");
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{i};K8S_POD_INFRA_CONTAINER_ID={id}"
    );
    let add = time_verb(bin, "ADD", &id, &path, &args, conf)?;
    let del = time_verb(bin, "DEL", &id, &path, &args, conf)?;
    Ok((add, del))
}
