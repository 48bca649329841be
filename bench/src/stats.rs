//! Order statistics over repeated runs: median, p90, min, max, mean.

use serde::Serialize;

/// The summary every measured metric is reported with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// 50th percentile.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// The `p`-th percentile (0..=100) of ascending `sorted` samples, interpolating linearly
/// between the two closest ranks (the definition numpy and R use by default).
/// `None` for no samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = (p.clamp(0.0, 100.0) / 100.0) * last as f64;
    let lower = rank.floor();
    let frac = rank - lower;
    let lo = index_at(lower, last);
    let hi = (lo + 1).min(last);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// `rank` (a whole number in 0..=last) as an index, clamped to `last`.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn index_at(rank: f64, last: usize) -> usize {
    // `rank` was clamped to 0..=last and floored, so the cast is exact.
    (rank.max(0.0) as usize).min(last)
}

/// Summarizes the finite values of `samples`; `None` if there are none.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let mean = sorted.iter().sum::<f64>() / n.max(1) as f64;
    Some(Summary {
        n,
        median: percentile(&sorted, 50.0)?,
        p90: percentile(&sorted, 90.0)?,
        min: *sorted.first()?,
        max: *sorted.last()?,
        mean,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_median_of_even_count_is_mean_of_middle_two() {
        let s = summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
    }

    #[test]
    fn test_p90_of_one_to_ten_interpolates() {
        let samples: Vec<f64> = (1..=10).map(f64::from).collect();
        let s = summarize(&samples).unwrap();
        // Rank 0.9 * 9 = 8.1: between 9 and 10.
        assert!((s.p90 - 9.1).abs() < 1e-9, "{}", s.p90);
    }

    #[test]
    fn test_summary_min_max_mean() {
        let s = summarize(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(
            (s.n, s.min, s.max, s.mean, s.median),
            (3, 1.0, 5.0, 3.0, 3.0)
        );
    }

    #[test]
    fn test_single_sample_is_every_statistic() {
        let s = summarize(&[7.0]).unwrap();
        assert_eq!((s.median, s.p90, s.min, s.max), (7.0, 7.0, 7.0, 7.0));
    }

    #[test]
    fn test_no_samples_is_none() {
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn test_non_finite_samples_are_ignored() {
        let s = summarize(&[f64::NAN, 2.0, f64::INFINITY]).unwrap();
        assert_eq!((s.n, s.median), (1, 2.0));
    }

    #[test]
    fn test_percentile_bounds() {
        let sorted = [1.0, 2.0, 3.0];
        assert_eq!(percentile(&sorted, 0.0), Some(1.0));
        assert_eq!(percentile(&sorted, 100.0), Some(3.0));
        assert_eq!(percentile(&sorted, 250.0), Some(3.0));
    }
}
