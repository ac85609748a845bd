//! Splitting an event's coupons over its policies.

/// Splits `total` over `weights` by largest-remainder (Hamilton) rounding:
/// each policy gets the floor of its exact share, and the coupons left over
/// go one each to the largest remainders (ties to the earlier policy). The
/// result always sums to exactly `total`.
///
/// `weights` must be non-empty and every weight > 0 (validated upstream).
pub fn allocate(total: u32, weights: &[u32]) -> Vec<u32> {
    assert!(!weights.is_empty(), "allocate needs at least one weight");
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    assert!(sum > 0, "allocate needs a positive weight");
    let total = u128::from(total);
    let mut counts: Vec<u32> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(u128, usize)> = Vec::with_capacity(weights.len());
    for (i, &w) in weights.iter().enumerate() {
        let exact = total * u128::from(w);
        // Each share is at most `total`, which fits u32.
        counts.push((exact / sum) as u32);
        remainders.push((exact % sum, i));
    }
    let assigned: u128 = counts.iter().map(|&c| u128::from(c)).sum();
    let left = (total - assigned) as usize;
    // Largest remainder first; equal remainders keep policy order.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take(left) {
        counts[i] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_give_the_leftover_to_the_first() {
        assert_eq!(allocate(1000, &[1, 1, 1]), vec![334, 333, 333]);
        assert_eq!(allocate(2, &[1, 1, 1]), vec![1, 1, 0]);
    }

    #[test]
    fn largest_remainder_wins() {
        // exact shares: 14.2857, 28.5714, 57.1428 -> floors 14, 28, 57 (=99);
        // the largest remainder (.5714) takes the last coupon.
        assert_eq!(allocate(100, &[1, 2, 4]), vec![14, 29, 57]);
        assert_eq!(allocate(10, &[7, 3]), vec![7, 3]);
    }

    #[test]
    fn sums_are_exact_over_many_shapes() {
        let shapes: &[&[u32]] = &[
            &[1],
            &[1, 1],
            &[3, 5, 7, 11],
            &[u32::MAX, 1],
            &[u32::MAX; 16],
            &[1, 1000000, 7],
        ];
        for total in [1u32, 2, 3, 7, 999, 1000, 10_000_000] {
            for w in shapes {
                let c = allocate(total, w);
                assert_eq!(c.len(), w.len());
                assert_eq!(
                    c.iter().map(|&x| u64::from(x)).sum::<u64>(),
                    u64::from(total)
                );
            }
        }
    }

    #[test]
    fn no_policy_gets_more_than_one_above_its_exact_share() {
        let w = [3u32, 5, 7, 11];
        let total = 12_345u32;
        let sum: f64 = w.iter().map(|&x| f64::from(x)).sum();
        for (c, &wi) in allocate(total, &w).iter().zip(&w) {
            let exact = f64::from(total) * f64::from(wi) / sum;
            assert!((f64::from(*c) - exact).abs() < 1.0, "{c} vs {exact}");
        }
    }
}
