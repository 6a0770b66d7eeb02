//! Smooth weighted round robin (nginx's): the turns of one cycle, computed once when the
//! config is compiled, so picking is one counter and one index. Over a cycle each entry
//! gets exactly its share, interleaved (weights 5:1:1 give a a b a c a a, not a a a a a b c).

/// The largest weight: a cycle is at most the sum of the weights (divided by their common
/// divisor), so it stays small enough to compute and keep.
pub const MAX_WEIGHT: u32 = 1000;

/// The index of the entry for each turn of one cycle; entries of weight 0 never come up.
/// Empty when every weight is 0.
pub fn smooth_order(weights: &[u32]) -> Box<[u16]> {
    let divisor = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd);
    if divisor == 0 {
        return Box::default();
    }
    let weights: Vec<i64> = weights.iter().map(|w| i64::from(w / divisor)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            // The first of the largest, so the order is the same on every compile.
            let best = (0..current.len())
                .rev()
                .max_by_key(|i| current[*i])
                .unwrap_or(0);
            current[best] -= total;
            best as u16
        })
        .collect()
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_gives_exact_shares_interleaved() {
        assert_eq!(&*smooth_order(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
        let order = smooth_order(&[90, 10]);
        assert_eq!(order.len(), 10, "reduced by the common divisor");
        assert_eq!(order.iter().filter(|i| **i == 1).count(), 1);
        assert_eq!(&*smooth_order(&[3, 0, 1]), &[0, 0, 2, 0]);
        assert!(smooth_order(&[0, 0]).is_empty());
        assert_eq!(&*smooth_order(&[1, 1, 1]), &[0, 1, 2]);
    }
}
