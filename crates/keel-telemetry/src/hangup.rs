//! SIGHUP for every program: [`run`](crate::run) listens for it from the
//! start, so a SIGHUP (`systemctl reload`, `kill -HUP`, a log rotator) never
//! ends a program by the signal's default action. A program that can reload
//! subscribes with [`Hangups::subscribe`]; where no one has subscribed, the
//! kit logs that the SIGHUP was ignored (the program reads its configuration
//! only at start).

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

/// The SIGHUPs the kit received, handed to whoever subscribed. Cloning
/// shares it. [`Hangups::trigger`] is what the kit's signal listener calls;
/// tests call it to stand in for the signal.
#[derive(Clone)]
pub struct Hangups {
    tx: Arc<watch::Sender<u64>>,
}

impl Default for Hangups {
    fn default() -> Self {
        Self::new()
    }
}

impl Hangups {
    /// No SIGHUP yet, no subscriber.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(0);
        Hangups { tx: Arc::new(tx) }
    }

    /// A receiver of the SIGHUPs that come after this call.
    pub fn subscribe(&self) -> HangupReceiver {
        HangupReceiver {
            rx: self.tx.subscribe(),
        }
    }

    /// Delivers one SIGHUP to every receiver. Returns whether anyone was
    /// subscribed.
    pub fn trigger(&self) -> bool {
        self.tx.send_modify(|n| *n += 1);
        self.tx.receiver_count() > 0
    }

    /// How many SIGHUPs were delivered.
    pub fn count(&self) -> u64 {
        *self.tx.borrow()
    }
}

impl fmt::Debug for Hangups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hangups")
            .field("count", &self.count())
            .field("subscribers", &self.tx.receiver_count())
            .finish()
    }
}

/// One subscriber's SIGHUPs. Several SIGHUPs that arrive before
/// [`HangupReceiver::recv`] is polled again count as one (a reload reads
/// the latest state anyway).
#[derive(Debug)]
pub struct HangupReceiver {
    rx: watch::Receiver<u64>,
}

impl HangupReceiver {
    /// Waits for the next SIGHUP; `None` once the kit is gone.
    pub async fn recv(&mut self) -> Option<()> {
        self.rx.changed().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_each_hangup_after_they_subscribed() {
        let hangups = Hangups::new();
        assert!(!hangups.trigger(), "no subscriber yet");
        let mut a = hangups.subscribe();
        let mut b = hangups.clone().subscribe();
        assert!(hangups.trigger());
        assert_eq!(a.recv().await, Some(()));
        assert_eq!(b.recv().await, Some(()));
        // Two before the next poll count as one.
        hangups.trigger();
        hangups.trigger();
        assert_eq!(a.recv().await, Some(()));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), a.recv())
                .await
                .is_err()
        );
        assert_eq!(hangups.count(), 4);
        drop(hangups);
        // b still holds one unseen change, then the end.
        assert_eq!(b.recv().await, Some(()));
        assert_eq!(b.recv().await, None);
    }
}
