//! Warm branch ENIs: how many spare branches to keep per security-group set, so a pod that
//! needs a set usually finds a branch ready instead of waiting for EC2.
//!
//! WARM_BRANCH_ENI_TARGET spare branches are kept for each set the node is likely to need: the
//! node's own groups (pods whose policies select nothing get those) and the sets named by the
//! policies of namespaces that have pods on this node. A set that is short is filled first by
//! moving a spare branch of another set over to it (one ModifyNetworkInterfaceAttribute
//! instead of a create and a delete), then by creating branches while the instance's branch
//! limit allows. Spares nobody needs are deleted.
//!
//! Branches still cooling down after their pod left cannot serve a pod yet, so they never count
//! as warm; they do take a slot of the branch limit until they are back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Spare branches per security-group set when WARM_BRANCH_ENI_TARGET is not set: one keeps the
/// next pod of each set from waiting on EC2 without holding many ENIs of a small branch limit.
pub const DEFAULT_WARM_BRANCH_ENI_TARGET: u32 = 1;

/// Security groups as EC2 applies them to an ENI: order and repeats carry no meaning.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupSet(BTreeSet<String>);

impl GroupSet {
    pub fn new<S: Into<String>>(ids: impl IntoIterator<Item = S>) -> Self {
        Self(ids.into_iter().map(Into::into).collect())
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for GroupSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.ids().collect();
        f.write_str(&ids.join(","))
    }
}

/// A branch ENI that is attached to the trunk, serves no pod and is out of its cooldown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmBranch {
    pub eni_id: String,
    pub groups: GroupSet,
}

/// What the pool looks like now.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// WARM_BRANCH_ENI_TARGET.
    pub target: u32,
    /// Sets the node is likely to need, the node's own groups first (see [`needed_sets`]).
    pub needed: &'a [GroupSet],
    pub warm: &'a [WarmBranch],
    /// Branches waiting out their cooldown.
    pub cooling: u32,
    /// Branches serving pods.
    pub in_use: u32,
    /// Branch ENIs the instance type allows on its trunk.
    pub branch_limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regroup {
    pub eni_id: String,
    pub from: GroupSet,
    pub to: GroupSet,
}

/// What to do: regroups first, then creations; deletions in any order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub create: Vec<(GroupSet, u32)>,
    pub regroup: Vec<Regroup>,
    pub delete: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.regroup.is_empty() && self.delete.is_empty()
    }
}

/// The node's own set first, then every other non-empty set once, in the order given.
pub fn needed_sets(node: GroupSet, others: impl IntoIterator<Item = GroupSet>) -> Vec<GroupSet> {
    let mut sets = vec![node];
    for set in others {
        if !set.is_empty() && !sets.contains(&set) {
            sets.push(set);
        }
    }
    sets
}

/// A set that is short of its target, with how many it has.
struct Shortfall<'a> {
    set: &'a GroupSet,
    have: u32,
    missing: u32,
}

pub fn plan(inputs: &Inputs) -> Plan {
    let by_set = group_warm(inputs.warm);
    let needed: Vec<&GroupSet> = dedup(inputs.needed);
    let mut short: Vec<Shortfall> = needed
        .iter()
        .map(|set| {
            let have = by_set.get(*set).map_or(0, |b| b.len() as u32);
            Shortfall {
                set,
                have,
                missing: inputs.target.saturating_sub(have),
            }
        })
        .filter(|s| s.missing > 0)
        .collect();
    let mut spare = spares(&by_set, &needed, inputs.target);

    let mut plan = Plan::default();
    fill_in_turns(&mut short, |s| {
        let branch = spare.pop_front()?;
        plan.regroup.push(Regroup {
            eni_id: branch.eni_id.clone(),
            from: branch.groups.clone(),
            to: s.set.clone(),
        });
        Some(())
    });
    plan.delete = spare.into_iter().map(|b| b.eni_id.clone()).collect();

    // Deletions free their slots only once EC2 has done them, so they are not counted here.
    let taken = inputs.in_use + inputs.cooling + inputs.warm.len() as u32;
    let mut free = inputs.branch_limit.saturating_sub(taken);
    let mut created: BTreeMap<&GroupSet, u32> = BTreeMap::new();
    fill_in_turns(&mut short, |s| {
        free = free.checked_sub(1)?;
        *created.entry(s.set).or_default() += 1;
        Some(())
    });
    plan.create = needed
        .iter()
        .filter_map(|set| created.get(set).map(|n| ((*set).clone(), *n)))
        .collect();
    plan
}

/// Gives each short set one branch per turn, sets with none at all first, until every set has
/// its target or `take` runs dry, so one set's large target cannot starve another set.
fn fill_in_turns<'a>(
    short: &mut [Shortfall<'a>],
    mut take: impl FnMut(&Shortfall<'a>) -> Option<()>,
) {
    let mut order: Vec<usize> = (0..short.len()).collect();
    order.sort_by_key(|&i| short[i].have > 0);
    loop {
        let mut progressed = false;
        for &i in &order {
            if short[i].missing == 0 {
                continue;
            }
            if take(&short[i]).is_none() {
                return;
            }
            short[i].missing -= 1;
            short[i].have += 1;
            progressed = true;
        }
        if !progressed {
            return;
        }
    }
}

fn group_warm(warm: &[WarmBranch]) -> BTreeMap<&GroupSet, Vec<&WarmBranch>> {
    let mut by_set: BTreeMap<&GroupSet, Vec<&WarmBranch>> = BTreeMap::new();
    for branch in warm {
        by_set.entry(&branch.groups).or_default().push(branch);
    }
    for branches in by_set.values_mut() {
        branches.sort_by(|a, b| a.eni_id.cmp(&b.eni_id));
    }
    by_set
}

fn dedup(sets: &[GroupSet]) -> Vec<&GroupSet> {
    let mut seen = BTreeSet::new();
    sets.iter().filter(|s| seen.insert(*s)).collect()
}

/// Spare branches, best to give away first: those of sets nobody needs, then the ones above
/// target of needed sets (the highest ENI ids of each set, so the choice is repeatable).
fn spares<'a>(
    by_set: &BTreeMap<&GroupSet, Vec<&'a WarmBranch>>,
    needed: &[&GroupSet],
    target: u32,
) -> std::collections::VecDeque<&'a WarmBranch> {
    let mut unneeded = Vec::new();
    let mut above_target = Vec::new();
    for (set, branches) in by_set {
        if needed.contains(set) {
            above_target.extend(branches.iter().skip(target as usize));
        } else {
            unneeded.extend(branches.iter());
        }
    }
    unneeded.into_iter().chain(above_target).copied().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> GroupSet {
        GroupSet::new(ids.iter().copied())
    }

    fn warm(eni: &str, ids: &[&str]) -> WarmBranch {
        WarmBranch {
            eni_id: eni.into(),
            groups: set(ids),
        }
    }

    fn inputs<'a>(needed: &'a [GroupSet], warm: &'a [WarmBranch]) -> Inputs<'a> {
        Inputs {
            target: 1,
            needed,
            warm,
            cooling: 0,
            in_use: 0,
            branch_limit: 9,
        }
    }

    #[test]
    fn group_sets_ignore_order_and_repeats() {
        assert_eq!(set(&["sg-b", "sg-a", "sg-b"]), set(&["sg-a", "sg-b"]));
        assert_eq!(set(&["sg-b", "sg-a"]).to_string(), "sg-a,sg-b");
    }

    #[test]
    fn needed_sets_put_the_node_first_and_skip_repeats_and_empties() {
        let node = set(&["sg-node"]);
        let got = needed_sets(
            node.clone(),
            [
                set(&["sg-a"]),
                set(&[]),
                set(&["sg-node"]),
                set(&["sg-a"]),
                set(&["sg-b"]),
            ],
        );
        assert_eq!(got, [node, set(&["sg-a"]), set(&["sg-b"])]);
    }

    #[test]
    fn empty_pool_creates_target_per_set() {
        let needed = [set(&["sg-node"]), set(&["sg-a"])];
        let mut i = inputs(&needed, &[]);
        i.target = 2;
        let p = plan(&i);
        assert_eq!(p.create, [(set(&["sg-node"]), 2), (set(&["sg-a"]), 2)]);
        assert!(p.regroup.is_empty() && p.delete.is_empty());
    }

    #[test]
    fn pool_at_target_does_nothing() {
        let needed = [set(&["sg-node"]), set(&["sg-a"])];
        let w = [warm("eni-1", &["sg-node"]), warm("eni-2", &["sg-a"])];
        assert!(plan(&inputs(&needed, &w)).is_empty());
    }

    #[test]
    fn surplus_of_a_needed_set_is_deleted_from_the_top() {
        let needed = [set(&["sg-node"])];
        let w = [
            warm("eni-3", &["sg-node"]),
            warm("eni-1", &["sg-node"]),
            warm("eni-2", &["sg-node"]),
        ];
        let p = plan(&inputs(&needed, &w));
        assert_eq!(p.delete, ["eni-2", "eni-3"]);
        assert!(p.create.is_empty() && p.regroup.is_empty());
    }

    #[test]
    fn spare_of_an_unneeded_set_is_regrouped_to_an_empty_set() {
        let needed = [set(&["sg-node"]), set(&["sg-a"])];
        let w = [warm("eni-1", &["sg-node"]), warm("eni-9", &["sg-old"])];
        let p = plan(&inputs(&needed, &w));
        assert_eq!(
            p.regroup,
            [Regroup {
                eni_id: "eni-9".into(),
                from: set(&["sg-old"]),
                to: set(&["sg-a"]),
            }]
        );
        assert!(p.create.is_empty() && p.delete.is_empty());
    }

    #[test]
    fn surplus_of_a_needed_set_moves_to_a_set_with_none() {
        let needed = [set(&["sg-node"]), set(&["sg-a"])];
        let w = [warm("eni-1", &["sg-node"]), warm("eni-2", &["sg-node"])];
        let p = plan(&inputs(&needed, &w));
        assert_eq!(p.regroup.len(), 1);
        assert_eq!(p.regroup[0].eni_id, "eni-2");
        assert_eq!(p.regroup[0].to, set(&["sg-a"]));
        assert!(p.create.is_empty() && p.delete.is_empty());
    }

    #[test]
    fn unneeded_spares_go_before_surplus_of_needed_sets() {
        let needed = [set(&["sg-node"]), set(&["sg-a"])];
        let w = [
            warm("eni-1", &["sg-node"]),
            warm("eni-2", &["sg-node"]),
            warm("eni-3", &["sg-old"]),
        ];
        let p = plan(&inputs(&needed, &w));
        assert_eq!(p.regroup[0].eni_id, "eni-3");
        assert_eq!(p.delete, ["eni-2"]);
    }

    #[test]
    fn unneeded_sets_are_deleted_when_nobody_is_short() {
        let needed = [set(&["sg-node"])];
        let w = [warm("eni-1", &["sg-node"]), warm("eni-7", &["sg-old"])];
        let p = plan(&inputs(&needed, &w));
        assert_eq!(p.delete, ["eni-7"]);
        assert!(p.create.is_empty() && p.regroup.is_empty());
    }

    #[test]
    fn creation_stops_at_the_branch_limit() {
        let needed = [set(&["sg-node"]), set(&["sg-a"]), set(&["sg-b"])];
        let mut i = inputs(&needed, &[]);
        i.target = 3;
        i.branch_limit = 9;
        i.in_use = 3;
        i.cooling = 2;
        // 4 free slots: every set gets one before any gets a second.
        let p = plan(&i);
        assert_eq!(
            p.create,
            [
                (set(&["sg-node"]), 2),
                (set(&["sg-a"]), 1),
                (set(&["sg-b"]), 1)
            ]
        );
    }

    #[test]
    fn sets_with_none_are_served_before_topping_up_others() {
        let needed = [set(&["sg-node"]), set(&["sg-a"])];
        let w = [warm("eni-1", &["sg-node"])];
        let mut i = inputs(&needed, &w);
        i.target = 2;
        i.branch_limit = 2;
        let p = plan(&i);
        assert_eq!(p.create, [(set(&["sg-a"]), 1)]);
    }

    #[test]
    fn cooling_branches_do_not_count_as_warm_but_take_slots() {
        let needed = [set(&["sg-node"])];
        let mut i = inputs(&needed, &[]);
        i.cooling = 1;
        assert_eq!(plan(&i).create, [(set(&["sg-node"]), 1)]);
        i.branch_limit = 1;
        assert!(plan(&i).is_empty());
    }

    #[test]
    fn full_node_still_regroups_and_deletes() {
        let needed = [set(&["sg-node"]), set(&["sg-a"]), set(&["sg-b"])];
        let w = [warm("eni-1", &["sg-node"]), warm("eni-2", &["sg-node"])];
        let mut i = inputs(&needed, &w);
        i.in_use = 7;
        let p = plan(&i);
        assert_eq!(p.regroup.len(), 1);
        assert_eq!(p.regroup[0].to, set(&["sg-a"]));
        assert!(p.create.is_empty());
    }

    #[test]
    fn target_zero_keeps_no_spares() {
        let needed = [set(&["sg-node"])];
        let w = [warm("eni-1", &["sg-node"]), warm("eni-2", &["sg-x"])];
        let mut i = inputs(&needed, &w);
        i.target = 0;
        let p = plan(&i);
        assert_eq!(p.delete, ["eni-2", "eni-1"]);
        assert!(p.create.is_empty() && p.regroup.is_empty());
    }

    #[test]
    fn repeated_needed_sets_count_once() {
        let needed = [set(&["sg-node"]), set(&["sg-node"])];
        let p = plan(&inputs(&needed, &[]));
        assert_eq!(p.create, [(set(&["sg-node"]), 1)]);
    }
}
