//! Address bookkeeping for one subnet. AWS reserves the first four addresses (network, router,
//! DNS, future use) and the last (broadcast) of every subnet; the rest go to ENIs as single
//! addresses or as aligned /28 prefixes.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use ipnet::Ipv4Net;

pub const PREFIX_LEN: u8 = 28;
const PREFIX_SIZE: u32 = 1 << (32 - PREFIX_LEN);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("address {0} is not in the usable range of subnet {1}")]
    OutOfRange(Ipv4Addr, Ipv4Net),
    #[error("prefix {0} is not an aligned /28 inside the usable range of subnet {1}")]
    BadPrefix(Ipv4Net, Ipv4Net),
    #[error("address {0} is in use")]
    InUse(Ipv4Addr),
    #[error("prefix {0} overlaps addresses in use")]
    PrefixInUse(Ipv4Net),
    #[error("subnet {subnet} has {free} free addresses, {wanted} wanted")]
    Exhausted {
        subnet: Ipv4Net,
        free: u64,
        wanted: u32,
    },
    #[error("subnet {subnet} has no {wanted} free /28 blocks")]
    NoFreeBlocks { subnet: Ipv4Net, wanted: u32 },
}

#[derive(Debug, Clone)]
pub struct AddressPool {
    cidr: Ipv4Net,
    used: BTreeSet<u32>,
}

impl AddressPool {
    pub fn new(cidr: Ipv4Net) -> Self {
        Self {
            cidr: cidr.trunc(),
            used: BTreeSet::new(),
        }
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The subnet's router, which is what DHCP hands out as the default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    fn usable(&self) -> RangeInclusive<u32> {
        let network = u32::from(self.cidr.network());
        let broadcast = u32::from(self.cidr.broadcast());
        (network + 4)..=(broadcast - 1)
    }

    pub fn is_usable(&self, ip: Ipv4Addr) -> bool {
        self.usable().contains(&u32::from(ip))
    }

    pub fn total(&self) -> u64 {
        let r = self.usable();
        u64::from(r.end() - r.start() + 1)
    }

    pub fn available(&self) -> u64 {
        self.total() - self.used.len() as u64
    }

    pub fn is_used(&self, ip: Ipv4Addr) -> bool {
        self.used.contains(&u32::from(ip))
    }

    /// Takes one given address.
    pub fn take(&mut self, ip: Ipv4Addr) -> Result<(), PoolError> {
        self.check_free(ip)?;
        self.used.insert(u32::from(ip));
        Ok(())
    }

    pub fn check_free(&self, ip: Ipv4Addr) -> Result<(), PoolError> {
        if !self.is_usable(ip) {
            return Err(PoolError::OutOfRange(ip, self.cidr));
        }
        if self.is_used(ip) {
            return Err(PoolError::InUse(ip));
        }
        Ok(())
    }

    /// Takes the `count` lowest free addresses, all or none.
    pub fn alloc(&mut self, count: u32) -> Result<Vec<Ipv4Addr>, PoolError> {
        if u64::from(count) > self.available() {
            return Err(PoolError::Exhausted {
                subnet: self.cidr,
                free: self.available(),
                wanted: count,
            });
        }
        let picked: Vec<u32> = self
            .usable()
            .filter(|n| !self.used.contains(n))
            .take(count as usize)
            .collect();
        self.used.extend(picked.iter().copied());
        Ok(picked.into_iter().map(Ipv4Addr::from).collect())
    }

    /// Takes `count` aligned /28 blocks that are wholly free, lowest first, all or none.
    pub fn alloc_prefixes(&mut self, count: u32) -> Result<Vec<Ipv4Net>, PoolError> {
        let picked: Vec<Ipv4Net> = self.free_blocks().take(count as usize).collect();
        if picked.len() < count as usize {
            return Err(PoolError::NoFreeBlocks {
                subnet: self.cidr,
                wanted: count,
            });
        }
        for block in &picked {
            self.mark_block(*block, true);
        }
        Ok(picked)
    }

    /// Takes one given /28.
    pub fn take_prefix(&mut self, prefix: Ipv4Net) -> Result<(), PoolError> {
        if !self.block_in_range(prefix) {
            return Err(PoolError::BadPrefix(prefix, self.cidr));
        }
        if !self.block_free(prefix) {
            return Err(PoolError::PrefixInUse(prefix));
        }
        self.mark_block(prefix, true);
        Ok(())
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }

    pub fn release_prefix(&mut self, prefix: Ipv4Net) {
        self.mark_block(prefix, false);
    }

    fn free_blocks(&self) -> impl Iterator<Item = Ipv4Net> + '_ {
        let first = u32::from(self.cidr.network());
        let size = 1u64 << (32 - self.cidr.prefix_len());
        let count = (size / u64::from(PREFIX_SIZE)) as u32;
        (0..count)
            .map(move |i| Ipv4Net::new(Ipv4Addr::from(first + i * PREFIX_SIZE), PREFIX_LEN))
            .filter_map(Result::ok)
            .filter(|b| self.block_in_range(*b) && self.block_free(*b))
    }

    fn block_in_range(&self, block: Ipv4Net) -> bool {
        block.prefix_len() == PREFIX_LEN
            && block.addr() == block.network()
            && self.is_usable(block.network())
            && self.is_usable(block.broadcast())
    }

    fn block_free(&self, block: Ipv4Net) -> bool {
        let start = u32::from(block.network());
        self.used.range(start..start + PREFIX_SIZE).next().is_none()
    }

    fn mark_block(&mut self, block: Ipv4Net, used: bool) {
        let start = u32::from(block.network());
        for n in start..start + PREFIX_SIZE {
            if used {
                self.used.insert(n);
            } else {
                self.used.remove(&n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str) -> AddressPool {
        AddressPool::new(cidr.parse().unwrap())
    }

    #[test]
    fn reserves_first_four_and_last() {
        let p = pool("10.0.0.0/24");
        assert_eq!(p.total(), 251);
        assert!(!p.is_usable("10.0.0.3".parse().unwrap()));
        assert!(p.is_usable("10.0.0.4".parse().unwrap()));
        assert!(p.is_usable("10.0.0.254".parse().unwrap()));
        assert!(!p.is_usable("10.0.0.255".parse().unwrap()));
        assert_eq!(p.gateway(), "10.0.0.1".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn allocates_lowest_free_all_or_nothing() {
        let mut p = pool("10.0.0.0/28");
        assert_eq!(p.total(), 11);
        p.take("10.0.0.5".parse().unwrap()).unwrap();
        let got = p.alloc(2).unwrap();
        assert_eq!(
            got,
            [
                "10.0.0.4".parse::<Ipv4Addr>().unwrap(),
                "10.0.0.6".parse().unwrap()
            ]
        );
        assert_eq!(p.available(), 8);
        let err = p.alloc(9).unwrap_err();
        assert!(matches!(
            err,
            PoolError::Exhausted {
                free: 8,
                wanted: 9,
                ..
            }
        ));
        assert_eq!(p.available(), 8);
        assert_eq!(
            p.take("10.0.0.5".parse().unwrap()),
            Err(PoolError::InUse("10.0.0.5".parse().unwrap()))
        );
    }

    #[test]
    fn prefixes_skip_reserved_and_fragmented_blocks() {
        let mut p = pool("10.0.0.0/26");
        // Block .0/28 holds reserved addresses, .48/28 the broadcast; .16 gets an address.
        p.take("10.0.0.20".parse().unwrap()).unwrap();
        let got = p.alloc_prefixes(1).unwrap();
        assert_eq!(got, ["10.0.0.32/28".parse::<Ipv4Net>().unwrap()]);
        assert!(matches!(
            p.alloc_prefixes(1),
            Err(PoolError::NoFreeBlocks { .. })
        ));
        assert_eq!(p.available(), 59 - 1 - 16);
        p.release_prefix(got[0]);
        assert_eq!(p.available(), 58);
    }

    #[test]
    fn given_prefix_must_be_aligned_and_free() {
        let mut p = pool("10.0.0.0/24");
        assert!(p.take_prefix("10.0.0.0/28".parse().unwrap()).is_err());
        assert!(p.take_prefix("10.0.0.24/29".parse().unwrap()).is_err());
        assert!(p.take_prefix("10.0.0.20/28".parse().unwrap()).is_err());
        p.take("10.0.0.70".parse().unwrap()).unwrap();
        assert!(matches!(
            p.take_prefix("10.0.0.64/28".parse().unwrap()),
            Err(PoolError::PrefixInUse(_))
        ));
        p.take_prefix("10.0.0.80/28".parse().unwrap()).unwrap();
        assert!(p.is_used("10.0.0.95".parse().unwrap()));
    }
}
