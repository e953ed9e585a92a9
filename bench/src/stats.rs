//! Latency samples and their summary.

use serde::Serialize;

/// Latency samples in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<f64>);

/// Summary of a set of samples (milliseconds). Percentiles are nearest-rank.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stats {
    pub count: usize,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Samples {
    pub fn push(&mut self, ms: f64) {
        self.0.push(ms);
    }

    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn stats(&self) -> Stats {
        let v = self.sorted();
        if v.is_empty() {
            return Stats::default();
        }
        Stats {
            count: v.len(),
            mean_ms: v.iter().sum::<f64>() / v.len() as f64,
            min_ms: v[0],
            p50_ms: rank(&v, 0.50),
            p90_ms: rank(&v, 0.90),
            p99_ms: rank(&v, 0.99),
            max_ms: v[v.len() - 1],
        }
    }

    /// The quantile function at 0%, 1%, ..., 100% (101 points), for plots.
    pub fn quantiles(&self) -> Vec<f64> {
        let v = self.sorted();
        if v.is_empty() {
            return Vec::new();
        }
        (0..=100)
            .map(|p| {
                if p == 0 {
                    v[0]
                } else {
                    rank(&v, p as f64 / 100.0)
                }
            })
            .map(round3)
            .collect()
    }
}

/// Nearest-rank percentile of sorted, non-empty `v`.
fn rank(v: &[f64], q: f64) -> f64 {
    let n = v.len();
    let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
    v[i]
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl Stats {
    /// The same summary with every figure rounded to microseconds, for JSON.
    pub fn rounded(self) -> Self {
        Self {
            count: self.count,
            mean_ms: round3(self.mean_ms),
            min_ms: round3(self.min_ms),
            p50_ms: round3(self.p50_ms),
            p90_ms: round3(self.p90_ms),
            p99_ms: round3(self.p99_ms),
            max_ms: round3(self.max_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut s = Samples::default();
        for i in 1..=100 {
            s.push(i as f64);
        }
        let st = s.stats();
        assert_eq!(st.count, 100);
        assert_eq!(st.p50_ms, 50.0);
        assert_eq!(st.p90_ms, 90.0);
        assert_eq!(st.p99_ms, 99.0);
        assert_eq!(st.max_ms, 100.0);
        assert_eq!(st.mean_ms, 50.5);
        let q = s.quantiles();
        assert_eq!(q.len(), 101);
        assert_eq!((q[0], q[50], q[100]), (1.0, 50.0, 100.0));
        assert_eq!(Samples::default().stats().count, 0);
    }
}
