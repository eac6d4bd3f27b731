//! Sweeping ENIs this node made and then lost track of: an ENI whose attach (or, for a
//! branch, whose association) failed and whose clean-up failed too, or one detached but not
//! deleted. Nothing else would ever delete them, and each costs an address of the subnet.
//!
//! A sweep lists the node's ENIs in EC2 and names those nothing uses; an ENI named by two
//! sweeps in a row, a sweep interval apart, is deleted. The second sighting keeps an ENI whose
//! creation is still under way (created, not yet attached) out of it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::ec2::{Ec2, EniDescription};

#[derive(Debug)]
pub struct LeakSweep {
    interval: Duration,
    next: Instant,
    suspects: BTreeSet<String>,
}

impl LeakSweep {
    /// The first sweep runs one interval from now.
    pub fn new(interval: Duration) -> Self {
        LeakSweep {
            interval,
            next: Instant::now() + interval,
            suspects: BTreeSet::new(),
        }
    }

    pub fn due(&self) -> bool {
        Instant::now() >= self.next
    }

    /// Takes the ENIs this sweep found unused and returns those the previous sweep found too,
    /// to be deleted; the rest are remembered for the next sweep.
    pub fn confirm(&mut self, unused: impl IntoIterator<Item = String>) -> Vec<String> {
        self.next = Instant::now() + self.interval;
        let (confirmed, fresh): (Vec<String>, Vec<String>) = unused
            .into_iter()
            .partition(|id| self.suspects.contains(id));
        for id in &fresh {
            tracing::info!(eni = %id, "unused eni of this node, deleting it if still so next sweep");
        }
        self.suspects = fresh.into_iter().collect();
        confirmed
    }

    /// A confirmed ENI whose deletion failed is tried again next sweep.
    pub fn retry(&mut self, eni_id: String) {
        self.suspects.insert(eni_id);
    }

    /// [`LeakSweep::confirm`], then deletes what it confirmed; a failed deletion is tried
    /// again next sweep. `what` names the ENIs in the log ("leaked eni").
    pub async fn delete_confirmed(
        &mut self,
        ec2: &Ec2,
        unused: impl IntoIterator<Item = String>,
        what: &str,
    ) {
        for eni in self.confirm(unused) {
            match ec2.delete_eni(&eni).await {
                Ok(()) => tracing::warn!(eni = %eni, "{what} deleted"),
                Err(e) => {
                    tracing::warn!(eni = %eni, error = %e, "could not delete a {what}");
                    self.retry(eni);
                }
            }
        }
    }

    /// A sweep that could not look: the next one is an interval away, suspects stay.
    pub fn skipped(&mut self) {
        self.next = Instant::now() + self.interval;
    }
}

/// The ENIs among `tagged` (this node's) with `description` that are not attached.
pub fn unattached(tagged: &[EniDescription], description: &str) -> Vec<String> {
    tagged
        .iter()
        .filter(|e| e.description == description && e.attachment.is_none())
        .map(|e| e.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_a_second_sighting_deletes() {
        let mut s = LeakSweep::new(Duration::ZERO);
        assert!(s.due());
        assert!(s.confirm(ids(&["eni-a", "eni-b"])).is_empty());
        // eni-b was attached meanwhile (a creation under way); eni-c is new.
        assert_eq!(s.confirm(ids(&["eni-a", "eni-c"])), ids(&["eni-a"]));
        assert_eq!(s.confirm(ids(&["eni-c"])), ids(&["eni-c"]));
        assert!(s.confirm(ids(&[])).is_empty());
    }

    #[test]
    fn a_failed_delete_is_tried_again() {
        let mut s = LeakSweep::new(Duration::ZERO);
        s.confirm(ids(&["eni-a"]));
        let confirmed = s.confirm(ids(&["eni-a"]));
        assert_eq!(confirmed, ids(&["eni-a"]));
        s.retry("eni-a".into());
        assert_eq!(s.confirm(ids(&["eni-a"])), ids(&["eni-a"]));
    }

    #[test]
    fn not_due_before_the_interval() {
        let mut s = LeakSweep::new(Duration::from_secs(600));
        assert!(!s.due());
        s.skipped();
        assert!(!s.due());
    }
}
