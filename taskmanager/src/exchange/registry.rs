//! The consumer side of every channel on this TaskManager, by [`ChannelKey`].
//!
//! Deploy registers every input channel of every subtask it deploys before it
//! starts any of them; producers (local tasks or the exchange server on behalf
//! of a remote producer) claim a channel once. A producer may come first (a
//! remote TaskManager deployed earlier), so claiming waits, bounded, for the
//! registration. Shared between the control runtime and the slot runtimes, so
//! it uses a std mutex (never held across an await) and a `Notify`.

use super::{ChannelItem, ChannelKey, Error, Result};
use crate::runtime::metrics::SubtaskMetrics;
use eddy_sdk::ids::{Attempt, JobId, VertexId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

/// Where a producer writes: the consumer's bounded queue and its counters.
#[derive(Clone, Debug)]
pub struct InputEndpoint {
    pub queue: mpsc::Sender<ChannelItem>,
    pub metrics: Arc<SubtaskMetrics>,
}

enum Entry {
    Open(InputEndpoint),
    Claimed,
}

#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    channels: Mutex<HashMap<ChannelKey, Entry>>,
    registered: Notify,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ChannelKey, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated
        // (every critical section is a single insert/remove), so poisoning is
        // safe to ignore.
        self.inner
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a consumer's input channel claimable (replacing a stale one).
    pub fn register(&self, key: ChannelKey, endpoint: InputEndpoint) {
        self.lock().insert(key, Entry::Open(endpoint));
        self.inner.registered.notify_waiters();
    }

    /// Takes the endpoint of `key`, waiting up to `wait` for it to be
    /// registered. Each channel has exactly one producer.
    pub async fn claim(&self, key: &ChannelKey, wait: Duration) -> Result<InputEndpoint> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Arm the notification before looking, so a registration between
            // the look and the wait is not missed.
            let notified = self.inner.registered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut map = self.lock();
                match map.get(key) {
                    Some(Entry::Open(_)) => {
                        if let Some(Entry::Open(endpoint)) = map.insert(key.clone(), Entry::Claimed)
                        {
                            return Ok(endpoint);
                        }
                    }
                    Some(Entry::Claimed) => return Err(Error::AlreadyClaimed { key: key.clone() }),
                    None => {}
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::NotRegistered {
                    key: key.clone(),
                    waited: wait,
                });
            }
        }
    }

    /// Forgets every channel of `job_id` (all attempts, or those before `keep`).
    pub fn remove_job(&self, job_id: &JobId, keep: Option<Attempt>) {
        self.lock()
            .retain(|k, _| &k.job_id != job_id || keep.is_some_and(|a| k.attempt >= a));
    }

    /// Forgets the input channels of one consumer subtask (it ended).
    pub fn remove_consumer(
        &self,
        job_id: &JobId,
        attempt: Attempt,
        to_vertex: VertexId,
        to_index: u32,
    ) {
        self.lock().retain(|k, _| {
            !(&k.job_id == job_id
                && k.attempt == attempt
                && k.to_vertex == to_vertex
                && k.to_index == to_index)
        });
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(to_index: u32) -> ChannelKey {
        ChannelKey {
            job_id: JobId("j".into()),
            attempt: Attempt(0),
            from_vertex: VertexId(0),
            from_index: 0,
            to_vertex: VertexId(1),
            to_index,
        }
    }

    fn endpoint() -> (InputEndpoint, mpsc::Receiver<ChannelItem>) {
        let (tx, rx) = mpsc::channel(1);
        (
            InputEndpoint {
                queue: tx,
                metrics: Arc::default(),
            },
            rx,
        )
    }

    #[tokio::test]
    async fn claim_before_register_waits_for_it() {
        let reg = Registry::new();
        let waiter = tokio::spawn({
            let reg = reg.clone();
            async move { reg.claim(&key(0), Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        let (ep, _rx) = endpoint();
        reg.register(key(0), ep);
        assert!(waiter.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn claim_never_registered_times_out() {
        let reg = Registry::new();
        let err = reg
            .claim(&key(0), Duration::from_secs(30))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotRegistered { .. }), "{err}");
    }

    #[tokio::test]
    async fn claim_twice_is_refused() {
        let reg = Registry::new();
        let (ep, _rx) = endpoint();
        reg.register(key(0), ep);
        reg.claim(&key(0), Duration::ZERO).await.unwrap();
        assert!(matches!(
            reg.claim(&key(0), Duration::ZERO).await,
            Err(Error::AlreadyClaimed { .. })
        ));
    }

    #[test]
    fn remove_job_keeps_newer_attempts_and_other_jobs() {
        let reg = Registry::new();
        let mut newer = key(0);
        newer.attempt = Attempt(1);
        let mut other = key(0);
        other.job_id = JobId("k".into());
        for k in [key(0), newer, other] {
            reg.register(k, endpoint().0);
        }
        reg.remove_job(&JobId("j".into()), Some(Attempt(1)));
        assert_eq!(reg.len(), 2);
        reg.remove_job(&JobId("j".into()), None);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn remove_consumer_forgets_only_its_channels() {
        let reg = Registry::new();
        let mut other_consumer = key(0);
        other_consumer.to_index = 1;
        let mut other_producer = key(0);
        other_producer.from_index = 1;
        for k in [key(0), other_consumer, other_producer] {
            reg.register(k, endpoint().0);
        }
        reg.remove_consumer(&JobId("j".into()), Attempt(0), VertexId(1), 0);
        assert_eq!(reg.len(), 1);
    }
}
