//! The in-process bus of a single node. Subscribers of a subject live in a
//! copy-on-write list, so publishing takes a lock only long enough to clone
//! an `Arc` and never holds it across an await.

use super::*;
/// Subjects are hashed on every publish; foldhash is several times faster
/// than SipHash on such short keys, which come from the node itself.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

struct Subscriber {
    id: u64,
    sender: mpsc::Sender<BusMessage>,
    ended: Arc<OnceLock<Ended>>,
    overflow: Overflow,
    tag: Option<String>,
}

type SubscriberList = Arc<Vec<Arc<Subscriber>>>;

#[derive(Default)]
struct Subjects {
    by_name: Mutex<HashMap<String, SubscriberList>>,
    next_id: AtomicU64,
}

impl Subjects {
    fn snapshot(&self, subject: &str) -> Option<SubscriberList> {
        self.lock().get(subject).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SubscriberList>> {
        self.by_name
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remove(&self, subject: &str, id: u64) {
        let mut map = self.lock();
        if let Some(list) = map.get(subject) {
            let rest: Vec<_> = list.iter().filter(|s| s.id != id).cloned().collect();
            if rest.is_empty() {
                map.remove(subject);
            } else {
                map.insert(subject.to_string(), Arc::new(rest));
            }
        }
    }
}

/// Unsubscribes when the `Subscription` is dropped.
struct Registration {
    subjects: Arc<Subjects>,
    subject: String,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.subjects.remove(&self.subject, self.id);
    }
}

/// Called with the subject whenever a subscriber is cut as a slow consumer.
pub type SlowConsumerHook = Arc<dyn Fn(&str) + Send + Sync>;

/// The embedded bus: in-process channels.
#[derive(Clone, Default)]
pub struct LocalBus {
    subjects: Arc<Subjects>,
    /// Called once per subscriber cut for overflowing (metrics).
    on_slow_consumer: Option<SlowConsumerHook>,
}

impl LocalBus {
    pub fn new() -> LocalBus {
        LocalBus::default()
    }

    /// Calls `hook(subject)` whenever a subscriber is cut as a slow consumer.
    pub fn with_slow_consumer_hook(mut self, hook: SlowConsumerHook) -> LocalBus {
        self.on_slow_consumer = Some(hook);
        self
    }

    fn cut(&self, subject: &str, subscriber: &Subscriber) {
        if subscriber.ended.set(Ended::SlowConsumer).is_ok() {
            self.subjects.remove(subject, subscriber.id);
            if let Some(hook) = &self.on_slow_consumer {
                hook(subject);
            }
        }
    }
}

#[async_trait::async_trait]
impl Bus for LocalBus {
    fn backend(&self) -> &'static str {
        "local"
    }

    async fn publish(&self, subject: &str, message: BusMessage, exclude: Option<&str>) -> usize {
        let Some(subscribers) = self.subjects.snapshot(subject) else {
            return 0;
        };
        let mut delivered = 0;
        for subscriber in subscribers.iter() {
            if exclude.is_some() && subscriber.tag.as_deref() == exclude {
                continue;
            }
            if subscriber.ended.get().is_some() {
                continue;
            }
            let sent = match subscriber.overflow {
                Overflow::Disconnect => match subscriber.sender.try_send(message.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.cut(subject, subscriber);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                },
                Overflow::Backpressure { stall } => {
                    match subscriber.sender.send_timeout(message.clone(), stall).await {
                        Ok(()) => true,
                        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                            self.cut(subject, subscriber);
                            false
                        }
                        Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
                    }
                }
            };
            delivered += sent as usize;
        }
        if message.last {
            // Dropping the senders ends every subscription once it has drained.
            self.subjects.lock().remove(subject);
        }
        delivered
    }

    async fn subscribe(&self, subject: &str, options: SubscribeOptions) -> Subscription {
        let (sender, receiver) = mpsc::channel(options.capacity.max(1));
        let ended = Arc::new(OnceLock::new());
        let id = self.subjects.next_id.fetch_add(1, Ordering::Relaxed);
        let subscriber = Arc::new(Subscriber {
            id,
            sender,
            ended: ended.clone(),
            overflow: options.overflow,
            tag: options.tag,
        });
        {
            let mut map = self.subjects.lock();
            let mut list: Vec<_> = map.get(subject).map(|l| l.to_vec()).unwrap_or_default();
            list.push(subscriber);
            map.insert(subject.to_string(), Arc::new(list));
        }
        Subscription {
            receiver,
            ended,
            _guard: Box::new(Registration {
                subjects: self.subjects.clone(),
                subject: subject.to_string(),
                id,
            }),
        }
    }

    #[cfg(test)]
    fn subscriber_count(&self, subject: &str) -> usize {
        self.subjects.snapshot(subject).map_or(0, |list| list.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &'static str) -> BusMessage {
        BusMessage {
            payload: Bytes::from_static(text.as_bytes()),
            last: false,
        }
    }

    fn options(capacity: usize, overflow: Overflow, tag: Option<&str>) -> SubscribeOptions {
        SubscribeOptions {
            capacity,
            overflow,
            tag: tag.map(str::to_string),
        }
    }

    #[tokio::test]
    async fn delivers_in_order_and_excludes_tag() {
        let bus = LocalBus::new();
        let mut a = bus
            .subscribe("s", options(8, Overflow::Disconnect, Some("a")))
            .await;
        let mut b = bus
            .subscribe("s", options(8, Overflow::Disconnect, Some("b")))
            .await;
        assert_eq!(bus.publish("s", message("1"), None).await, 2);
        assert_eq!(bus.publish("s", message("2"), Some("a")).await, 1);
        assert_eq!(a.next().await.unwrap().unwrap().payload, "1");
        assert_eq!(b.next().await.unwrap().unwrap().payload, "1");
        assert_eq!(b.next().await.unwrap().unwrap().payload, "2");
        drop(a);
        assert_eq!(bus.subscriber_count("s"), 1);
    }

    #[tokio::test]
    async fn full_disconnect_queue_cuts_only_that_subscriber() {
        let cuts = Arc::new(AtomicU64::new(0));
        let counter = cuts.clone();
        let bus = LocalBus::new().with_slow_consumer_hook(Arc::new(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        }));
        let mut slow = bus
            .subscribe("s", options(2, Overflow::Disconnect, None))
            .await;
        let mut fast = bus
            .subscribe("s", options(16, Overflow::Disconnect, None))
            .await;
        for _ in 0..3 {
            bus.publish("s", message("x"), None).await;
            fast.next().await.unwrap();
        }
        assert_eq!(cuts.load(Ordering::Relaxed), 1);
        assert!(slow.next().await.unwrap().is_some());
        assert!(slow.next().await.unwrap().is_some());
        assert_eq!(slow.next().await.unwrap_err(), Ended::SlowConsumer);
        assert_eq!(bus.publish("s", message("y"), None).await, 1);
    }

    #[tokio::test]
    async fn backpressure_waits_then_cuts_a_stalled_subscriber() {
        let bus = LocalBus::new();
        let stall = Duration::from_millis(50);
        let mut sub = bus
            .subscribe("w", options(1, Overflow::Backpressure { stall }, None))
            .await;
        assert_eq!(bus.publish("w", message("1"), None).await, 1);
        let bus2 = bus.clone();
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            sub.next().await.unwrap().unwrap();
            sub
        });
        // Waits for the reader instead of cutting it.
        assert_eq!(bus2.publish("w", message("2"), None).await, 1);
        let mut sub = reader.await.unwrap();
        assert_eq!(
            bus.publish("w", message("3"), None).await,
            0,
            "stalled for longer than `stall`"
        );
        assert!(sub.next().await.unwrap().is_some());
        assert_eq!(sub.next().await.unwrap_err(), Ended::SlowConsumer);
    }

    #[tokio::test]
    async fn last_message_ends_subscriptions() {
        let bus = LocalBus::new();
        let mut sub = bus
            .subscribe("r", options(4, Overflow::Disconnect, None))
            .await;
        bus.publish(
            "r",
            BusMessage {
                payload: Bytes::new(),
                last: true,
            },
            None,
        )
        .await;
        assert!(sub.next().await.unwrap().unwrap().last);
        assert!(sub.next().await.unwrap().is_none());
    }
}
