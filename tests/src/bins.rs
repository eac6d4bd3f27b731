//! Where the workspace's built binaries are.

use std::path::PathBuf;

/// Path of a workspace binary (`vpc-cni`, `ipamd`, `vpc-sim`) built in the same profile as the
/// running test or harness binary. `make test` builds them all first.
pub fn path(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("VPC_CNI_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    // Integration test binaries live in target/<profile>/deps.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace --bins` (make test does)",
        p.display()
    );
    p
}
