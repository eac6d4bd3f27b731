//! Network namespace handles, and running code inside one on a dedicated thread.
//!
//! setns(2) switches only the calling thread. Doing it on a tokio worker would move every
//! task that later runs there, so namespace work happens on a short-lived thread that enters
//! the namespace, does one thing (typically open a netlink socket, which stays bound to that
//! namespace for its whole life) and switches back through a guard before it ends.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("netns {0}: does not exist")]
    NotFound(PathBuf),
    #[error("netns {0}: not a network namespace (nothing mounted there)")]
    NotNetns(PathBuf),
    #[error("netns {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("netns {path}: enter: {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("netns {path}: thread: {source}")]
    Thread { path: PathBuf, source: io::Error },
}

impl NetnsError {
    /// The namespace is gone (deleted, or its bind mount undone). DEL treats this as "nothing
    /// left inside it to clean".
    pub fn is_gone(&self) -> bool {
        matches!(self, NetnsError::NotFound(_) | NetnsError::NotNetns(_))
    }
}

/// An open network namespace: the file keeps the namespace alive while we use it.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens a namespace file such as /var/run/netns/NAME or /proc/PID/ns/net.
    pub fn open(path: impl AsRef<Path>) -> Result<Netns, NetnsError> {
        let path = path.as_ref().to_path_buf();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(NetnsError::NotFound(path))
            }
            Err(source) => return Err(NetnsError::Open { path, source }),
        };
        // `ip netns del` and runtimes unmount before unlinking; a file left without its
        // mount is a plain empty file, which setns would reject with EINVAL later.
        let fs = fstatfs(&file).map_err(|e| NetnsError::Open {
            path: path.clone(),
            source: e.into(),
        })?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(NetnsError::NotNetns(path));
        }
        Ok(Netns { file, path })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Netns, NetnsError> {
        Netns::open("/proc/thread-self/ns/net")
    }

    /// Opens /var/run/netns/NAME, as `ip netns` names them.
    pub fn named(name: &str) -> Result<Netns, NetnsError> {
        Netns::open(Path::new("/var/run/netns").join(name))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// True when both handles refer to the same namespace (same nsfs inode).
    pub fn same_as(&self, other: &Netns) -> Result<bool, NetnsError> {
        let meta = |n: &Netns| {
            n.file.metadata().map_err(|source| NetnsError::Open {
                path: n.path.clone(),
                source,
            })
        };
        let (a, b) = (meta(self)?, meta(other)?);
        Ok(a.dev() == b.dev() && a.ino() == b.ino())
    }

    /// Runs `f` on the calling thread, switched into this namespace for just that long, and
    /// returns its value. For short synchronous work such as opening a socket, which stays in
    /// the namespace it was made in: a fresh thread per call would cost more than the work.
    pub fn run_here<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let _guard = EnterGuard::enter(self)?;
        Ok(f())
    }

    /// Runs `f` on a fresh thread that has entered this namespace and returns its value.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("netns".into())
                .spawn_scoped(scope, || {
                    let _guard = EnterGuard::enter(self)?;
                    Ok(f())
                })
                .map_err(|source| NetnsError::Thread {
                    path: self.path.clone(),
                    source,
                })?;
            // A panic inside `f` is re-raised here, on the caller's thread.
            worker
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

/// Holds the thread inside another namespace; switching back happens in Drop, so a panic
/// cannot leave the thread in the wrong namespace.
struct EnterGuard {
    previous: File,
}

impl EnterGuard {
    fn enter(target: &Netns) -> Result<EnterGuard, NetnsError> {
        let previous =
            File::open("/proc/thread-self/ns/net").map_err(|source| NetnsError::Open {
                path: "/proc/thread-self/ns/net".into(),
                source,
            })?;
        setns(&target.file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: target.path.clone(),
            source,
        })?;
        Ok(EnterGuard { previous })
    }
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        if let Err(err) = setns(&self.previous, CloneFlags::CLONE_NEWNET) {
            // Never let a thread run on in a namespace it was not meant to be in.
            tracing::error!(%err, "cannot switch thread back to its network namespace");
            std::process::abort();
        }
    }
}
