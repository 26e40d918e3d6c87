//! Order statistics over repetitions: median and spread.

/// Median, quartiles and range of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// First quartile (linear interpolation between order statistics).
    pub q1: f64,
    /// Third quartile.
    pub q3: f64,
    /// Number of values.
    pub n: usize,
}

impl Spread {
    /// Interquartile range.
    pub fn iqr(&self) -> f64 {
        self.q3 - self.q1
    }
}

/// Quantile `q` in `[0, 1]` of sorted data, interpolating linearly (the "R-7" definition).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// The spread of the finite values in `values`, or `None` if there are none.
pub fn spread(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(Spread {
        median: quantile(&v, 0.5),
        min: v[0],
        max: v[v.len() - 1],
        q1: quantile(&v, 0.25),
        q3: quantile(&v, 0.75),
        n: v.len(),
    })
}

/// The median of the finite values, or `None`.
#[cfg(test)]
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    spread(values).map(|s| s.median)
}

/// `a / b`, or `None` when either is missing or `b` is not positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(a / b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_and_even() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median([7.0]), Some(7.0));
        assert_eq!(median([]), None);
        assert_eq!(median([f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn spread_has_range_and_iqr() {
        let s = spread([1.0, 2.0, 3.0, 4.0, 100.0]).expect("non-empty");
        assert_eq!(s.median, 3.0);
        assert_eq!((s.min, s.max), (1.0, 100.0));
        assert_eq!((s.q1, s.q3), (2.0, 4.0));
        assert_eq!(s.iqr(), 2.0);
        assert_eq!(s.n, 5);
    }

    #[test]
    fn ratio_is_null_without_a_baseline() {
        assert_eq!(ratio(Some(30.0), Some(20.0)), Some(1.5));
        assert_eq!(ratio(Some(30.0), None), None);
        assert_eq!(ratio(None, Some(20.0)), None);
        assert_eq!(ratio(Some(30.0), Some(0.0)), None);
    }
}
