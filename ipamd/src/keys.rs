//! Per-attachment serialisation. RPCs for one (network, container, ifname) run one at a
//! time, and a DEL cancels an ADD for the same key that is still waiting for the pool, so
//! the DEL wins instead of queueing behind it (the runtime has given up on that ADD).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedMutexGuard};

use crate::datastore::Key;

#[derive(Default)]
pub struct Cancel {
    flag: AtomicBool,
    notify: Notify,
}

impl Cancel {
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub async fn cancelled(&self) {
        let notified = self.notify.notified();
        if !self.is_cancelled() {
            notified.await;
        }
    }

    fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

#[derive(Default)]
struct Entry {
    lock: Arc<tokio::sync::Mutex<()>>,
    users: usize,
    adds: Vec<Arc<Cancel>>,
}

#[derive(Default)]
pub struct KeyTable {
    entries: Mutex<HashMap<Key, Entry>>,
}

/// Membership of one RPC in a key's entry; the lock itself comes from [`Self::lock`].
pub struct KeyGuard<'a> {
    table: &'a KeyTable,
    key: Key,
    lock: Arc<tokio::sync::Mutex<()>>,
    cancel: Option<Arc<Cancel>>,
}

impl KeyTable {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&self, key: &Key, cancel: Option<Arc<Cancel>>) -> KeyGuard<'_> {
        let mut map = self.map();
        let entry = map.entry(key.clone()).or_default();
        entry.users += 1;
        entry.adds.extend(cancel.clone());
        KeyGuard {
            table: self,
            key: key.clone(),
            lock: entry.lock.clone(),
            cancel,
        }
    }

    /// An ADD: cancellable by a later DEL of the same key.
    pub fn enter_add(&self, key: &Key) -> KeyGuard<'_> {
        self.enter(key, Some(Arc::new(Cancel::default())))
    }

    /// A DEL: cancels the ADDs of the key in flight, then queues for the key.
    pub fn enter_del(&self, key: &Key) -> KeyGuard<'_> {
        if let Some(entry) = self.map().get(key) {
            entry.adds.iter().for_each(|c| c.cancel());
        }
        self.enter(key, None)
    }

    pub fn enter_other(&self, key: &Key) -> KeyGuard<'_> {
        self.enter(key, None)
    }

    /// Whether any RPC for this key is running.
    pub fn in_flight(&self, key: &Key) -> bool {
        self.map().get(key).is_some_and(|e| e.users > 0)
    }
}

impl KeyGuard<'_> {
    pub async fn lock(&self) -> OwnedMutexGuard<()> {
        self.lock.clone().lock_owned().await
    }

    pub fn cancel(&self) -> Option<&Arc<Cancel>> {
        self.cancel.as_ref()
    }

    /// Other RPCs for this key besides this one.
    pub fn others(&self) -> usize {
        self.table
            .map()
            .get(&self.key)
            .map_or(0, |e| e.users.saturating_sub(1))
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.table.map();
        let Some(entry) = map.get_mut(&self.key) else {
            return;
        };
        entry.users -= 1;
        if let Some(mine) = &self.cancel {
            entry.adds.retain(|c| !Arc::ptr_eq(c, mine));
        }
        if entry.users == 0 {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn del_cancels_a_waiting_add_of_the_same_key_only() {
        let table = KeyTable::default();
        let key = Key::new("aws-cni", "c1", "eth0");
        let add = table.enter_add(&key);
        let other = table.enter_add(&Key::new("aws-cni", "c2", "eth0"));
        let _held = add.lock().await;
        assert!(table.in_flight(&key));

        let del = table.enter_del(&key);
        assert!(add.cancel().unwrap().is_cancelled());
        assert!(!other.cancel().unwrap().is_cancelled());
        assert_eq!(del.others(), 1);
        drop(_held);
        drop(add);
        let _l = del.lock().await;
        drop(_l);
        drop(del);
        assert!(!table.in_flight(&key));

        let next = table.enter_add(&key);
        assert!(
            !next.cancel().unwrap().is_cancelled(),
            "a later ADD starts uncancelled"
        );
    }

    #[tokio::test]
    async fn cancelled_wakes_a_waiter() {
        let table = KeyTable::default();
        let key = Key::new("n", "c", "i");
        let add = table.enter_add(&key);
        let cancel = add.cancel().unwrap().clone();
        let waiter = tokio::spawn(async move { cancel.cancelled().await });
        tokio::task::yield_now().await;
        let _del = table.enter_del(&key);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
