//! Latency samples and percentiles.

use std::time::Duration;

/// Latency samples in nanoseconds (bounded by each scenario's call count).
#[derive(Debug, Default)]
pub struct Samples {
    nanos: Vec<u64>,
}

impl Samples {
    pub fn with_capacity(capacity: usize) -> Samples {
        Samples {
            nanos: Vec::with_capacity(capacity),
        }
    }

    pub fn push(&mut self, latency: Duration) {
        self.nanos.push(latency.as_nanos() as u64);
    }

    pub fn push_nanos(&mut self, nanos: u64) {
        self.nanos.push(nanos);
    }

    pub fn merge(&mut self, other: Samples) {
        self.nanos.extend(other.nanos);
    }

    pub fn len(&self) -> usize {
        self.nanos.len()
    }

    /// The `p`-th percentile (0..=100) in microseconds; NaN without samples.
    pub fn percentile_us(&mut self, p: f64) -> f64 {
        if self.nanos.is_empty() {
            return f64::NAN;
        }
        self.nanos.sort_unstable();
        let rank = ((p / 100.0) * (self.nanos.len() - 1) as f64).round() as usize;
        self.nanos[rank.min(self.nanos.len() - 1)] as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut samples = Samples::default();
        for us in 1..=100u64 {
            samples.push(Duration::from_micros(us));
        }
        assert_eq!(samples.percentile_us(50.0), 51.0);
        assert_eq!(samples.percentile_us(99.0), 99.0);
        assert_eq!(samples.percentile_us(100.0), 100.0);
        assert!(Samples::default().percentile_us(50.0).is_nan());
    }
}
