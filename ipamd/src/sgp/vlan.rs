//! VLAN ids on one trunk ENI: each branch ENI is associated with the trunk under its own id,
//! and the node tells a pod's traffic apart by that id.
//!
//! Ids run from 1 to min(120, the instance type's branch limit), as the VPC Resource Controller
//! hands them out; 0 is never used because 802.1Q reserves it for priority tagging.

use std::collections::BTreeSet;

use thiserror::Error;

/// The highest id 802.1Q allows (4095 is reserved).
pub const MAX_VLAN_ID: u16 = 4094;
/// No instance type carries more branch ENIs than this, so no trunk needs a higher id.
pub const MAX_TRUNK_VLAN_ID: u16 = 120;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum VlanError {
    #[error("instance type supports no branch enis")]
    NoTrunking,
    #[error("all vlan ids 1..={max} of the trunk are in use")]
    Exhausted { max: u16 },
}

/// The highest id a trunk on an instance type with `branch_limit` branch ENIs uses.
pub fn trunk_max(branch_limit: u32) -> u16 {
    branch_limit.min(u32::from(MAX_TRUNK_VLAN_ID)) as u16
}

/// The lowest id in 1..=trunk_max(branch_limit) that is not in `in_use`.
pub fn lowest_free(
    branch_limit: u32,
    in_use: impl IntoIterator<Item = u16>,
) -> Result<u16, VlanError> {
    let max = trunk_max(branch_limit);
    if max == 0 {
        return Err(VlanError::NoTrunking);
    }
    let used: BTreeSet<u16> = in_use.into_iter().collect();
    (1..=max)
        .find(|id| !used.contains(id))
        .ok_or(VlanError::Exhausted { max })
}

/// The ids of one trunk that are taken. An id stays taken from allocation until the branch
/// that holds it has been disassociated; ids learned from EC2 tags, trunk associations and
/// the checkpoint are all marked so a restart never hands out an id that is still live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanTable {
    branch_limit: u32,
    used: BTreeSet<u16>,
}

impl VlanTable {
    pub fn new(branch_limit: u32) -> Self {
        Self {
            branch_limit,
            used: BTreeSet::new(),
        }
    }

    pub fn max(&self) -> u16 {
        trunk_max(self.branch_limit)
    }

    pub fn mark_used(&mut self, ids: impl IntoIterator<Item = u16>) {
        self.used.extend(ids);
    }

    /// Takes the lowest free id.
    pub fn allocate(&mut self) -> Result<u16, VlanError> {
        let id = lowest_free(self.branch_limit, self.used.iter().copied())?;
        self.used.insert(id);
        Ok(id)
    }

    /// Gives `id` back; call only once its branch is no longer associated with the trunk.
    pub fn release(&mut self, id: u16) -> bool {
        self.used.remove(&id)
    }

    pub fn is_used(&self, id: u16) -> bool {
        self.used.contains(&id)
    }

    pub fn in_use(&self) -> impl Iterator<Item = u16> + '_ {
        self.used.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunk_range_follows_branch_limit_up_to_120() {
        assert_eq!(trunk_max(0), 0);
        assert_eq!(trunk_max(9), 9);
        assert_eq!(trunk_max(120), 120);
        assert_eq!(trunk_max(4000), 120);
    }

    #[test]
    fn first_id_is_one() {
        assert_eq!(lowest_free(9, []), Ok(1));
    }

    #[test]
    fn lowest_gap_is_reused() {
        assert_eq!(lowest_free(9, [1, 2, 4, 5]), Ok(3));
        assert_eq!(lowest_free(9, [2, 3]), Ok(1));
    }

    #[test]
    fn ids_outside_the_range_do_not_count() {
        // An id above the trunk's range (say from a tag written for a larger type) blocks
        // nothing inside it.
        assert_eq!(lowest_free(3, [1, 2, 200]), Ok(3));
    }

    #[test]
    fn full_trunk_is_exhausted() {
        assert_eq!(
            lowest_free(3, [3, 1, 2]),
            Err(VlanError::Exhausted { max: 3 })
        );
        let all: Vec<u16> = (1..=120).collect();
        assert_eq!(
            lowest_free(200, all),
            Err(VlanError::Exhausted { max: 120 })
        );
    }

    #[test]
    fn no_trunking_type_has_no_ids() {
        assert_eq!(lowest_free(0, []), Err(VlanError::NoTrunking));
        assert_eq!(
            VlanError::NoTrunking.to_string(),
            "instance type supports no branch enis"
        );
    }

    #[test]
    fn table_never_reuses_a_live_id() {
        let mut table = VlanTable::new(4);
        // From EC2 tags, then from trunk associations, then from the checkpoint.
        table.mark_used([2]);
        table.mark_used([4]);
        table.mark_used([2]);
        assert_eq!(table.allocate(), Ok(1));
        assert_eq!(table.allocate(), Ok(3));
        assert_eq!(table.allocate(), Err(VlanError::Exhausted { max: 4 }));

        assert!(table.release(2));
        assert!(!table.release(2));
        assert!(!table.is_used(2));
        assert_eq!(table.allocate(), Ok(2));
        assert_eq!(table.in_use().collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(table.max(), 4);
    }
}
