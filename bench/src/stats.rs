//! Order statistics over samples: median, min–max and nearest-rank percentiles.
//!
//! Pure arithmetic on `f64` slices; it knows nothing of what was measured.

/// Median, minimum and maximum of a non-empty sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// None for an empty sample (a row that was not measured).
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let v = sorted(samples);
    let (first, last) = (*v.first()?, *v.last()?);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    Some(Summary {
        median,
        min: first,
        max: last,
        n: v.len(),
    })
}

/// The nearest-rank `p`th percentile (0 < p ≤ 100): the smallest sample with at least p% of
/// the samples at or below it. p99 of 100 samples is the second largest.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let v = sorted(samples);
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v.get(rank.min(v.len()) - 1).copied()
}

/// (p50, p99); NaN for an empty sample (the row then shows as not measured).
pub fn p50_p99(samples: &[f64]) -> (f64, f64) {
    let p = |q| percentile(samples, q).unwrap_or(f64::NAN);
    (p(50.0), p(99.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_samples() {
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(summarize(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn non_finite_samples_are_ignored() {
        assert_eq!(summarize(&[f64::NAN, 5.0]).unwrap().median, 5.0);
        assert_eq!(summarize(&[f64::NAN]), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[2.0, 1.0], 50.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
