//! A second kernel, User-mode Linux, for what the host kernel cannot do here (802.1Q VLANs).
//!
//! The guest boots on the host's root file system read-only, so it runs the host's `ip`,
//! `iptables-legacy` and the cargo-built binaries directly; a shared directory carries the
//! script in and its output and exit code back (see tests/uml/guest-init.sh).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct GuestRun {
    pub exit_code: i32,
    pub output: String,
}

/// Whether the machine has a User-mode Linux kernel with the 802.1Q module.
pub fn available() -> bool {
    Path::new("/usr/bin/linux").exists() && Path::new("/usr/lib/uml/modules").exists()
}

/// Boots a guest with `mem_mb` of memory, runs `script` (sh) in it and returns its exit code
/// and output. The guest's own netns, links and firewall die with it.
pub fn run(script: &str, mem_mb: u32, timeout: Duration) -> anyhow::Result<GuestRun> {
    if !available() {
        bail!("User-mode Linux is not installed (Debian package user-mode-linux)");
    }
    let share = tempfile::Builder::new().prefix("uml").tempdir()?;
    std::fs::write(share.path().join("run.sh"), script)?;
    let init = concat!(env!("CARGO_MANIFEST_DIR"), "/uml/guest-init.sh");
    let console = std::fs::File::create(share.path().join("console.log"))?;
    let mut child = Command::new("linux")
        .arg(format!("mem={mem_mb}M"))
        .args(["root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro"])
        .arg(format!("init={init}"))
        .arg(format!("VPCCNI_SHARE={}", share.path().display()))
        .arg(format!("uml_dir={}", share.path().display()))
        .args(["con=null", "con0=null,fd:1"])
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(Stdio::null())
        .spawn()
        .context("start linux (User-mode Linux)")?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "guest did not finish in {timeout:?}; output so far:\n{}",
                std::fs::read_to_string(share.path().join("output.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = std::fs::read_to_string(share.path().join("output.log")).unwrap_or_default();
    let code = std::fs::read_to_string(share.path().join("exit-code"))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    match code {
        Some(exit_code) => Ok(GuestRun { exit_code, output }),
        None => bail!(
            "guest stopped without running the script; console:\n{}",
            std::fs::read_to_string(share.path().join("console.log")).unwrap_or_default()
        ),
    }
}
