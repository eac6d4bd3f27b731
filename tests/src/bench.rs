//! Timing the plugin the way a runtime runs it: one process per verb, executed from inside the
//! node's network namespace, against a named baseline run in the same session.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

/// Runs `bin` as a CNI plugin and returns how long the process took, start to exit.
/// The calling thread must already be in the node namespace; the child inherits it.
pub fn time_verb(
    bin: &Path,
    command: &str,
    container_id: &str,
    netns: &str,
    args: &str,
    conf: &Value,
) -> anyhow::Result<Duration> {
    let conf = conf.to_string();
    let start = Instant::now();
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", args)
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes())?;
    let out = child.wait_with_output()?;
    let took = start.elapsed();
    if !out.status.success() {
        bail!(
            "{command} by {} failed: {}{}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(took)
}

/// Median and 90th percentile, in milliseconds.
pub fn summary(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(samples[((samples.len() - 1) as f64 * q).round() as usize]);
    (at(0.5), at(0.9))
}
