//! A TCP relay from loopback inside a network namespace to loopback in the root namespace, so
//! a daemon running in a simulated node (ipamd) reaches a server the harness runs on the
//! host (the kube-apiserver). Both ends are loopback; nothing leaves the machine.

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::netns;

pub struct Relay {
    /// The port on 127.0.0.1 inside the namespace.
    pub port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Relay {
    /// Listens on 127.0.0.1:<free port> in `netns` and relays each connection to `target`.
    pub fn start(netns: &str, target: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(
            target.ip().is_loopback(),
            "relay target {target} is not loopback"
        );
        let ns = netns.to_string();
        // The socket belongs to the namespace it is made in; the thread that made it ends.
        let listener = std::thread::spawn(move || -> anyhow::Result<TcpListener> {
            netns::enter(&ns)?;
            let l = TcpListener::bind(("127.0.0.1", 0)).context("bind relay listener")?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("relay bind thread panicked"))??;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let accept = std::thread::spawn(move || accept_loop(&listener, target, &flag));
        Ok(Self {
            port,
            stop,
            accept: Some(accept),
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Runs on a thread of the root namespace, so the upstream connections are made there.
fn accept_loop(listener: &TcpListener, target: SocketAddr, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                if let Err(e) = relay(client, target) {
                    tracing::warn!(error = %e, %target, "relay connection failed");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => tracing::warn!(error = %e, "relay accept failed"),
        }
    }
}

fn relay(client: TcpStream, target: SocketAddr) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let upstream = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    pump(client.try_clone()?, upstream.try_clone()?);
    pump(upstream, client);
    Ok(())
}

/// Copies one direction until it ends, then half-closes the other side.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let _ = io::copy(&mut from, &mut to);
        let _ = to.shutdown(Shutdown::Write);
    });
}
