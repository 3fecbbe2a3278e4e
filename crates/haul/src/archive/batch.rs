//! Group commit: gather records and say when a batch is due.
//!
//! A batch is due when it holds `max_records` or its oldest record has waited `max_delay`,
//! whichever comes first. The clock is passed in, so the policy is tested without sleeping.

use std::time::{Duration, Instant};

/// Collects records into batches by size and age.
#[derive(Debug)]
pub(crate) struct Batcher<T> {
    max_records: usize,
    max_delay: Duration,
    pending: Vec<T>,
    oldest: Option<Instant>,
}

impl<T> Batcher<T> {
    pub(crate) fn new(max_records: usize, max_delay: Duration) -> Self {
        Self {
            max_records: max_records.max(1),
            max_delay,
            pending: Vec::new(),
            oldest: None,
        }
    }

    /// Adds a record; true when the batch is now due.
    pub(crate) fn push(&mut self, item: T, now: Instant) -> bool {
        self.oldest.get_or_insert(now);
        self.pending.push(item);
        self.is_due(now)
    }

    /// True when the batch is full or its oldest record is old enough.
    pub(crate) fn is_due(&self, now: Instant) -> bool {
        self.pending.len() >= self.max_records || self.deadline().is_some_and(|d| d <= now)
    }

    /// When the current batch becomes due by age, if it holds anything.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.max_delay)
    }

    /// Takes the batch, in arrival order.
    pub(crate) fn take(&mut self) -> Vec<T> {
        self.oldest = None;
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_trigger() {
        let now = Instant::now();
        let mut b = Batcher::new(3, Duration::from_secs(60));
        assert!(!b.push(1, now));
        assert!(!b.push(2, now));
        assert!(b.push(3, now));
        assert_eq!(b.take(), vec![1, 2, 3]);
        assert!(b.deadline().is_none());
        assert!(
            !b.is_due(now + Duration::from_secs(3600)),
            "an empty batch is never due"
        );
    }

    #[test]
    fn time_trigger_counts_from_the_oldest_record() {
        let start = Instant::now();
        let mut b = Batcher::new(100, Duration::from_millis(50));
        assert!(!b.push("a", start));
        assert!(!b.push("b", start + Duration::from_millis(40)));
        assert_eq!(b.deadline(), Some(start + Duration::from_millis(50)));
        assert!(!b.is_due(start + Duration::from_millis(49)));
        assert!(b.is_due(start + Duration::from_millis(50)));
        assert_eq!(b.take(), vec!["a", "b"]);
        assert!(!b.push("c", start + Duration::from_millis(60)));
        assert_eq!(b.deadline(), Some(start + Duration::from_millis(110)));
    }
}
