//! Experiment assignment by the published hash: FNV-1a 64 over UTF-8.

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(OFFSET_BASIS, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The index of the variant a customer gets at a split: the first whose running sum of
/// weights exceeds `FNV-1a-64("{journey}:{step}:{customer}") mod sum(weights)`.
pub fn split_variant(journey: &str, step: &str, customer: &str, weights: &[u32]) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return 0;
    }
    let h = fnv1a64(format!("{journey}:{step}:{customer}").as_bytes()) % total;
    let mut running = 0;
    for (i, &w) in weights.iter().enumerate() {
        running += u64::from(w);
        if running > h {
            return i;
        }
    }
    weights.len() - 1
}

/// Whether a customer entering a journey with `holdout: percent` is in the control group.
pub fn in_holdout(journey: &str, customer: &str, percent: u8) -> bool {
    fnv1a64(format!("{journey}:holdout:{customer}").as_bytes()) % 100 < u64::from(percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn split_respects_weights() {
        let picks: Vec<_> = (0..1000)
            .map(|i| split_variant("j", "s", &format!("c{i}"), &[1, 3]))
            .collect();
        let second = picks.iter().filter(|&&v| v == 1).count();
        assert!((650..850).contains(&second), "{second}");
    }
}
