//! Identifiers shaped like EC2's: `eni-` and `eni-attach-` followed by 17 hex digits, locally
//! administered unicast MACs starting with 02, and request ids in UUID form.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Debug)]
pub struct IdGen {
    rng: StdRng,
}

impl IdGen {
    pub fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        Self { rng }
    }

    /// `prefix-` followed by 17 lower-case hex digits.
    pub fn resource_id(&mut self, prefix: &str) -> String {
        let n: u128 = self.rng.gen::<u128>() & ((1u128 << 68) - 1);
        format!("{prefix}-{n:017x}")
    }

    pub fn mac(&mut self) -> String {
        let b: [u8; 5] = self.rng.gen();
        format!(
            "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4]
        )
    }

    pub fn token(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..len)
            .map(|_| ALPHABET[self.rng.gen_range(0..ALPHABET.len())] as char)
            .collect()
    }
}

/// A fresh request id like `9b1c7a2e-3f4d-4c5b-8a6e-0d1f2e3c4b5a`.
pub fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_ec2_shape() {
        let mut ids = IdGen::new(Some(7));
        let eni = ids.resource_id("eni");
        assert_eq!(eni.len(), "eni-".len() + 17);
        assert!(eni[4..].chars().all(|c| c.is_ascii_hexdigit()));
        let attach = ids.resource_id("eni-attach");
        assert!(attach.starts_with("eni-attach-") && attach.len() == 11 + 17);
        let mac = ids.mac();
        assert!(mac.starts_with("02:") && mac.len() == 17);
        assert_eq!(request_id().len(), 36);
    }

    #[test]
    fn seeded_generators_repeat() {
        let a = IdGen::new(Some(1)).resource_id("eni");
        let b = IdGen::new(Some(1)).resource_id("eni");
        assert_eq!(a, b);
    }
}
