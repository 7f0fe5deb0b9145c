//! A keyed sliding-window limiter the fakes use to enforce a service's
//! documented rate limits (following tokio's clock).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// At most `max` accepted requests per key in any window of `per`.
#[derive(Debug, Clone)]
pub(crate) struct KeyedLimit {
    max: usize,
    per: Duration,
    sent: HashMap<String, VecDeque<Instant>>,
}

impl KeyedLimit {
    pub(crate) fn new(max: u32, per: Duration) -> Self {
        KeyedLimit {
            max: max as usize,
            per,
            sent: HashMap::new(),
        }
    }

    /// Counts one request for `key` at `now` if it fits; otherwise how long
    /// until it would (at least one millisecond).
    pub(crate) fn check(&mut self, key: &str, now: Instant) -> Result<(), Duration> {
        let per = self.per;
        let sent = self.sent.entry(key.to_owned()).or_default();
        while sent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= per)
        {
            sent.pop_front();
        }
        if sent.len() >= self.max {
            let oldest = sent[sent.len() - self.max];
            return Err((oldest + per)
                .saturating_duration_since(now)
                .max(Duration::from_millis(1)));
        }
        sent.push_back(now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn limits_per_key() {
        let mut l = KeyedLimit::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(l.check("a", t0).is_ok());
        assert!(l.check("a", t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(
            l.check("a", t0 + Duration::from_secs(20)),
            Err(Duration::from_secs(40))
        );
        assert!(l.check("b", t0).is_ok(), "keys are independent");
        assert!(l.check("a", t0 + Duration::from_secs(60)).is_ok());
    }
}
