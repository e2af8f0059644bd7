//! Histograms a reactor fills with relaxed atomic adds (its own, so no
//! cache line is shared on the hot path) and `/metrics` reads at scrape.
//! Fixed buckets: an observation costs a short scan and three adds.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

/// The most buckets a histogram has, besides `+Inf`.
const MAX_BOUNDS: usize = 16;

/// Upper bounds of a histogram's buckets, in the unit it observes.
pub trait Bounds {
    const BOUNDS: &'static [u64];
}

/// Durations in microseconds, 50 µs to 2.5 s.
#[derive(Debug, Default)]
pub struct Micros;

impl Bounds for Micros {
    const BOUNDS: &'static [u64] = &[
        50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000,
    ];
}

/// Counts (frames in a queue), 1 to 16,384 in powers of two.
#[derive(Debug, Default)]
pub struct Depth;

impl Bounds for Depth {
    const BOUNDS: &'static [u64] = &[
        1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 2_048, 4_096, 8_192, 16_384,
    ];
}

#[derive(Debug, Default)]
pub struct Histogram<B: Bounds> {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: [AtomicU64; MAX_BOUNDS + 1],
    sum: AtomicU64,
    bounds: PhantomData<B>,
}

/// A histogram read at one moment: cumulative counts per upper bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(u64, u64)>,
    pub count: u64,
    pub sum: u64,
}

impl<B: Bounds> Histogram<B> {
    pub fn observe(&self, value: u64) {
        let bucket = B::BOUNDS
            .iter()
            .position(|&bound| value <= bound)
            .unwrap_or(B::BOUNDS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(B::BOUNDS.len());
        for (i, &bound) in B::BOUNDS.iter().enumerate() {
            total += self.counts[i].load(Ordering::Relaxed);
            buckets.push((bound, total));
        }
        total += self.counts[B::BOUNDS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets,
            count: total,
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_with_the_rest_in_inf() {
        assert!(Micros::BOUNDS.len() <= MAX_BOUNDS && Depth::BOUNDS.len() <= MAX_BOUNDS);
        let h = Histogram::<Depth>::default();
        for value in [0, 1, 2, 3, 100, 1_000_000] {
            h.observe(value);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert_eq!(s.sum, 1_000_106);
        assert_eq!(s.buckets[0], (1, 2));
        assert_eq!(s.buckets[1], (2, 3));
        assert_eq!(s.buckets[2], (4, 4));
        assert_eq!(s.buckets[7], (128, 5));
        assert_eq!(
            s.buckets.last(),
            Some(&(16_384, 5)),
            "one above every bound"
        );
    }
}
