//! NIC residence time: from a frame's arrival at the port to its publication in the guest's
//! used ring, what no real NIC shows. One histogram per queue and class.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Longest residence recorded exactly (longer ones saturate): 60 s.
const MAX_NS: u64 = 60_000_000_000;

pub struct Residence {
    histogram: Histogram<u64>,
    /// A value recorded `.1` times in a row, not yet in the histogram. Frames of a burst
    /// are published at one time and stamped on arrival eight at a time, so runs of equal
    /// residences are common at high rates, and one histogram update per run instead of
    /// per frame saves most of what recording cost.
    run: (u64, u64),
}

/// Quantiles reported besides the named percentiles, enough to draw a CDF.
pub const CDF_QUANTILES: [f64; 12] = [
    0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0,
];

/// Percentiles of a residence histogram, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResidenceSummary {
    pub count: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    /// Values at [`CDF_QUANTILES`], in order.
    pub cdf_ns: [u64; 12],
}

/// A residence histogram cut at fixed bounds (see [`Residence::buckets`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResidenceBuckets {
    /// Frames per bucket, not cumulative; the last slot holds those above every bound.
    pub counts: Vec<u64>,
    /// Sum of the recorded residences (each at the middle of its histogram bin).
    pub sum_ns: u64,
}

impl Default for Residence {
    fn default() -> Self {
        Self::new()
    }
}

impl Residence {
    pub fn new() -> Self {
        // Bounds and 2 significant digits are constants that Histogram accepts; a failure here
        // would be a programming error caught by the unit tests, so fall back to auto-resizing.
        let histogram = Histogram::new_with_bounds(1, MAX_NS, 2)
            .unwrap_or_else(|_| Histogram::new(2).unwrap_or_else(|_| unreachable!()));
        Residence {
            histogram,
            run: (0, 0),
        }
    }

    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.record_n(ns, 1);
    }

    /// Records `count` frames that stayed `ns` each (frames of one arrival stamp published
    /// together).
    #[inline]
    pub fn record_n(&mut self, ns: u64, count: u64) {
        let ns = ns.clamp(1, MAX_NS);
        if self.run.0 == ns {
            self.run.1 += count;
        } else {
            self.end_run();
            self.run = (ns, count);
        }
    }

    /// Puts the current run of equal values into the histogram.
    fn end_run(&mut self) {
        let (ns, count) = std::mem::take(&mut self.run);
        if count > 0 {
            self.histogram.saturating_record_n(ns, count);
        }
    }

    pub fn reset(&mut self) {
        self.run = (0, 0);
        self.histogram.reset();
    }

    /// Counts per bucket for a Prometheus histogram: `bounds_ns` ascending, the counts not
    /// cumulative, the frames above the last bound in a final slot (so `bounds_ns.len() + 1`
    /// counts). A value goes to the first bucket whose bound is at least the value's
    /// highest equivalent in the histogram (two significant digits), so a bucket never
    /// counts a frame that may have been longer than its bound.
    pub fn buckets(&mut self, bounds_ns: &[u64]) -> ResidenceBuckets {
        self.end_run();
        let mut buckets = ResidenceBuckets {
            counts: vec![0; bounds_ns.len() + 1],
            sum_ns: 0,
        };
        for value in self.histogram.iter_recorded() {
            let (ns, count) = (value.value_iterated_to(), value.count_at_value());
            let slot = bounds_ns.partition_point(|&bound| bound < ns);
            buckets.counts[slot] += count;
            let median = self.histogram.median_equivalent(ns);
            buckets.sum_ns = buckets.sum_ns.saturating_add(median.saturating_mul(count));
        }
        buckets
    }

    pub fn summary(&mut self) -> ResidenceSummary {
        self.end_run();
        let h = &self.histogram;
        if h.is_empty() {
            return ResidenceSummary::default();
        }
        ResidenceSummary {
            count: h.len(),
            p50_ns: h.value_at_quantile(0.5),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
            cdf_ns: CDF_QUANTILES.map(|q| h.value_at_quantile(q)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut residence = Residence::new();
        for ns in 1..=1000u64 {
            residence.record(ns * 1000);
        }
        let summary = residence.summary();
        assert_eq!(summary.count, 1000);
        // Two significant digits: within 1%.
        assert!((495_000..=505_000).contains(&summary.p50_ns), "{summary:?}");
        assert!((985_000..=995_000).contains(&summary.p99_ns), "{summary:?}");
        residence.reset();
        assert_eq!(residence.summary().count, 0);
    }

    #[test]
    fn runs_of_equal_values_count_in_full_and_in_place() {
        let mut residence = Residence::new();
        for ns in [500, 500, 500, 9000, 9000, 500, 500] {
            residence.record(ns);
        }
        let summary = residence.summary();
        assert_eq!(summary.count, 7);
        assert_eq!(summary.max_ns / 100, 9000 / 100);
        // Five of the seven at 500 ns: the median is there.
        assert_eq!(summary.p50_ns / 10, 50);
        // Asked again with nothing new: the same.
        assert_eq!(residence.summary(), summary);
        residence.record(500);
        assert_eq!(residence.summary().count, 8);
        residence.reset();
        residence.record(7);
        assert_eq!(residence.summary().count, 1);
    }

    #[test]
    fn buckets_count_each_frame_once_under_the_first_bound_that_holds_it() {
        let mut residence = Residence::new();
        for ns in [500, 500, 900, 1_500, 9_000, 2_000_000] {
            residence.record(ns);
        }
        let buckets = residence.buckets(&[1_000, 10_000, 1_000_000]);
        assert_eq!(buckets.counts, vec![3, 2, 0, 1]);
        let exact: u64 = 500 + 500 + 900 + 1_500 + 9_000 + 2_000_000;
        // Two significant digits: each value within 1% of itself.
        assert!(buckets.sum_ns.abs_diff(exact) <= exact / 100, "{buckets:?}");
        assert_eq!(Residence::new().buckets(&[1_000]).counts, vec![0, 0]);
    }

    #[test]
    fn out_of_range_values_saturate() {
        let mut residence = Residence::new();
        residence.record(0);
        residence.record(u64::MAX);
        assert_eq!(residence.summary().count, 2);
    }
}
