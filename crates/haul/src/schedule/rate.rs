//! A token bucket: at most `rate` requests per second to one host, with a small burst.
//!
//! Pure, with the clock passed in. The scheduler keeps one per host (in its host map, which
//! forgets idle hosts only once their bucket is full again, so forgetting never grants a burst
//! the bucket would not have had).

use std::time::{Duration, Instant};

/// A request rate: so many per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_second: f64,
}

impl Rate {
    /// `count` requests per `period`.
    ///
    /// # Panics
    /// Never: a zero period or count gives the slowest rate (one a day).
    #[must_use]
    pub fn new(count: u32, period: Duration) -> Self {
        let per_second = f64::from(count.max(1)) / period.as_secs_f64().max(1e-3);
        Self {
            per_second: per_second.max(1.0 / 86_400.0),
        }
    }

    /// Parses `50/s`, `120/m`, `3000/h` (or a bare number: per second).
    ///
    /// ```
    /// let rate = haul::Rate::parse("120/m").unwrap();
    /// assert_eq!(rate, haul::Rate::parse("2/s").unwrap());
    /// assert!(haul::Rate::parse("fast").is_err());
    /// ```
    ///
    /// # Errors
    /// A message naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (count, unit) = text.split_once('/').unwrap_or((text, "s"));
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| format!("not a rate: {text:?} (try 50/s, 120/m)"))?;
        if count == 0 {
            return Err(format!("a rate of zero never sends anything: {text:?}"));
        }
        let period = match unit.trim() {
            "s" | "sec" => Duration::from_secs(1),
            "m" | "min" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => return Err(format!("unknown period {other:?} in {text:?} (use s, m or h)")),
        };
        Ok(Self::new(count, period))
    }

    /// One `n`-th of this rate (a fleet's share).
    pub(crate) fn divided(self, n: usize) -> Self {
        Self {
            per_second: self.per_second / n.max(1) as f64,
        }
    }

    /// Requests per second.
    #[must_use]
    pub fn per_second(self) -> f64 {
        self.per_second
    }
}

/// The burst a bucket allows: one request, so that no one-second window holds more than the
/// rate plus one.
const BURST: f64 = 1.0;

/// One host's bucket.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    rate: Rate,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            tokens: BURST,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate.per_second).min(BURST);
        self.last = now;
    }

    /// When a request may go (now, if a token is there).
    pub(crate) fn ready_at(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            now
        } else {
            now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate.per_second)
        }
    }

    /// Takes a token (call only when [`Bucket::ready_at`] said now).
    pub(crate) fn take(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }

    /// Changes the rate from now on (the tokens already there stay).
    pub(crate) fn set_rate(&mut self, rate: Rate, now: Instant) {
        self.refill(now);
        self.rate = rate;
    }

    /// True when the bucket is full again (nothing would be lost by forgetting it).
    pub(crate) fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= BURST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_more_than_rate_plus_burst_in_a_second() {
        let start = Instant::now();
        let mut bucket = Bucket::new(Rate::parse("50/s").unwrap(), start);
        let mut now = start;
        let mut sent = Vec::new();
        while sent.len() < 300 {
            let at = bucket.ready_at(now);
            now = at;
            bucket.take(now);
            sent.push(now);
        }
        let span = now - start;
        assert!(
            span >= Duration::from_millis(5_950),
            "300 at 50/s take about 6 s: {span:?}"
        );
        for (i, t) in sent.iter().enumerate() {
            let in_window = sent[i..]
                .iter()
                .take_while(|u| **u < *t + Duration::from_secs(1))
                .count();
            assert!(in_window <= 51, "{in_window} requests in one second");
        }
    }

    #[test]
    fn parses_periods() {
        assert!((Rate::parse("3000/h").unwrap().per_second() - 5.0 / 6.0).abs() < 1e-9);
        assert_eq!(Rate::parse("7").unwrap(), Rate::parse("7/s").unwrap());
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("5/d").unwrap_err().contains("unknown period"));
    }
}

/// A byte budget shared by every transfer (`--limit-rate`): each chunk received takes its size
/// from it, and a transfer that overdraws it waits until the debt is paid back. Small files take
/// little and pass almost at once; large ones are slowed in proportion, so the total stays at
/// the limit without starving anyone.
#[derive(Debug)]
pub(crate) struct Bandwidth {
    bytes_per_second: f64,
    /// (bytes available, may be negative; when counted).
    state: std::sync::Mutex<(f64, Instant)>,
}

impl Bandwidth {
    /// A budget of `bytes_per_second`, with a burst of a tenth of a second.
    pub(crate) fn new(bytes_per_second: u64) -> Self {
        #[expect(clippy::cast_precision_loss, reason = "rates far below 2^52")]
        let rate = bytes_per_second.max(1) as f64;
        Self {
            bytes_per_second: rate,
            state: std::sync::Mutex::new((rate / 10.0, Instant::now())),
        }
    }

    /// Takes `bytes` at `now`; returns how long the caller must wait before going on.
    pub(crate) fn take(&self, bytes: u64, now: Instant) -> Duration {
        let mut state = self.state.lock().expect("bandwidth");
        let (available, last) = *state;
        let burst = self.bytes_per_second / 10.0;
        let refilled =
            (available + now.saturating_duration_since(last).as_secs_f64() * self.bytes_per_second).min(burst);
        #[expect(clippy::cast_precision_loss, reason = "chunk sizes far below 2^52")]
        let left = refilled - bytes as f64;
        *state = (left, now);
        if left >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-left / self.bytes_per_second)
        }
    }
}

#[cfg(test)]
mod bandwidth_tests {
    use super::*;

    #[test]
    fn debt_is_paid_back_at_the_rate() {
        let start = Instant::now();
        let limit = Bandwidth::new(1_000_000);
        // The burst (100 KB) passes; the next 100 KB waits 0.1 s.
        assert_eq!(limit.take(100_000, start), Duration::ZERO);
        let wait = limit.take(100_000, start);
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // Paid back by then: a small chunk a tenth of a second later waits only for itself.
        let later = start + Duration::from_millis(100);
        assert!(limit.take(1_000, later) <= Duration::from_millis(2));
    }
}

/// The byte budgets one body takes from: the run's and its host rule's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budgets<'a> {
    pub(crate) all: Option<&'a Bandwidth>,
    pub(crate) host: Option<&'a Bandwidth>,
}

impl Budgets<'_> {
    /// True when there is a budget to take from.
    pub(crate) fn any(&self) -> bool {
        self.all.is_some() || self.host.is_some()
    }
}

impl crate::fetch::Throttle for Budgets<'_> {
    fn take(&self, bytes: u64) -> Duration {
        let now = Instant::now();
        let all = self.all.map_or(Duration::ZERO, |b| b.take(bytes, now));
        let host = self.host.map_or(Duration::ZERO, |b| b.take(bytes, now));
        all.max(host)
    }
}
