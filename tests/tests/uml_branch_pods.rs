//! Branch-ENI (security groups for pods) wiring on real 802.1Q links. The host kernel has no
//! VLAN support, so the plugin's VLAN suite (cni-plugin/tests/vlan.rs: plumbing, CHECK drift,
//! rollback, teardown of both modes, a data path through the VLAN, and the `vpc-cni` binary
//! against a scripted ipamd) runs inside one User-mode Linux guest.
//!
//! The suite is the test binary cargo built for `cargo test -p vpc-cni`; a missing or stale
//! one fails this test with the command that rebuilds it. Needs the Debian package
//! user-mode-linux; fails (never skips) without it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use harness::uml;

const SUITE: &str = "vlan";
const REBUILD: &str = "cargo test -p vpc-cni --no-run";

#[test]
fn vpc_cni_vlan_suite_passes_in_a_uml_guest() {
    let suite = newest_suite();
    let plugin_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cni-plugin");
    assert_fresh(&suite, &plugin_dir);
    let cases = ignored_cases(&suite);
    assert!(cases > 0, "{} lists no VLAN tests", suite.display());

    // Inside the guest the suite runs as cargo would run it: from its package directory.
    let script = format!(
        "cd {}\n{} --ignored --test-threads=1\n",
        plugin_dir.display(),
        suite.display()
    );
    let run = uml::run(&script, 384, Duration::from_secs(900)).expect("boot the UML guest");
    let summary = format!("test result: ok. {cases} passed; 0 failed");
    assert!(
        run.exit_code == 0 && run.output.contains(&summary),
        "VLAN suite failed in the guest (exit {}, expected \"{summary}\"):\n{}",
        run.exit_code,
        run.output
    );
}

/// The newest `vlan-<hash>` test executable next to this one (target/<profile>/deps).
fn newest_suite() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    let candidates = std::fs::read_dir(deps)
        .expect("read deps dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_suite(p));
    candidates.max_by_key(|p| modified(p)).unwrap_or_else(|| {
        panic!(
            "the vpc-cni VLAN suite is not built in {}; run `{REBUILD}`",
            deps.display()
        )
    })
}

/// `vlan-` followed by cargo's 16 hex digit hash, no extension (not the `.d` file).
fn is_suite(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Some(hash) = name.strip_prefix(SUITE).and_then(|n| n.strip_prefix('-')) else {
        return false;
    };
    hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit())
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// An old build would test old code and pass for the wrong reason. The suite is built from
/// the plugin's sources and tests, the binary it drives from the sources alone.
fn assert_fresh(suite: &Path, plugin_dir: &Path) {
    let plugin = suite.parent().unwrap().parent().unwrap().join("vpc-cni");
    for (built, from) in [
        (suite, &["src", "tests"][..]),
        (plugin.as_path(), &["src"][..]),
    ] {
        assert!(
            built.exists() && modified(built) >= newest_under(plugin_dir, from),
            "{} is older than the vpc-cni sources; run `{REBUILD}`",
            built.display()
        );
    }
}

fn newest_under(root: &Path, dirs: &[&str]) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack: Vec<PathBuf> = dirs.iter().map(|d| root.join(d)).collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                newest = newest.max(modified(&path));
            }
        }
    }
    newest
}

/// How many ignored (VLAN) tests the suite has; listing needs no VLAN support.
fn ignored_cases(suite: &Path) -> usize {
    let out = Command::new(suite)
        .args(["--list", "--ignored"])
        .output()
        .expect("list the VLAN suite");
    assert!(out.status.success(), "{} --list failed", suite.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.ends_with(": test"))
        .count()
}
