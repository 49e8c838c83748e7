//! Per-user lanes: one event at a time per user, in arrival order; many users at once.
//!
//! Two events about one user must never race (invariant 3): a quarantine and its release sent
//! concurrently could land in either order and leave the user locked out, or not. So each user
//! (the lower-cased user name) has a queue, and one task works through it. Different users run
//! concurrently. How many may act on Netskope at once is the handler's business (it takes a
//! permit after the blast-radius guard, so that a halted deactivation blocks no one else). A
//! lane's task exits when its queue is empty, so idle users cost nothing. The queues together
//! hold at most the in-flight events, which the consumer bounds.
//!
//! A handler that panics must not wedge its lane in silence: the user's later events would
//! queue behind it forever and their offsets never be stored. The panic is caught and handed
//! to `on_panic` (the pipeline stops the worker with it); the lane stays registered, so the
//! user's later events wait for the restart that delivers them again, in order.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio_util::task::TaskTracker;

type Handler<T> = dyn Fn(T) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;
type PanicHandler = dyn Fn(String) + Send + Sync;

/// Lanes of work items of type `T`, each handled by `handler`.
pub struct Lanes<T: Send + 'static> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    /// A key is present while its lane's task runs; the queue holds the items behind the one
    /// being handled.
    queues: Mutex<HashMap<String, VecDeque<T>>>,
    handler: Box<Handler<T>>,
    on_panic: Box<PanicHandler>,
    tasks: TaskTracker,
}

impl<T: Send + 'static> Lanes<T> {
    /// `on_panic` receives what a panicking handler said, with its lane's key.
    pub fn new<F, Fut>(
        tasks: TaskTracker,
        handler: F,
        on_panic: impl Fn(String) + Send + Sync + 'static,
    ) -> Self
    where
        F: Fn(T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            inner: Arc::new(Inner {
                queues: Mutex::new(HashMap::new()),
                handler: Box::new(move |item| Box::pin(handler(item))),
                on_panic: Box::new(on_panic),
                tasks,
            }),
        }
    }

    /// Queues `item` behind the earlier items of lane `key`.
    pub fn submit(&self, key: String, item: T) {
        let mut queues = self.inner.lock();
        if let Some(queue) = queues.get_mut(&key) {
            queue.push_back(item);
            return;
        }
        queues.insert(key.clone(), VecDeque::new());
        drop(queues);
        let inner = self.inner.clone();
        // Boxed: a task's future is moved by value into and within tokio's task cell; a box
        // makes each move a pointer copy instead of the whole item and its state.
        self.inner.tasks.spawn(Box::pin(inner.run(key, item)));
    }

    /// Users with a running lane.
    pub fn active(&self) -> usize {
        self.inner.lock().len()
    }
}

impl<T: Send + 'static> Inner<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<T>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(self: Arc<Self>, key: String, first: T) {
        let mut next = Some(first);
        while let Some(item) = next {
            if let Err(panic) = AssertUnwindSafe((self.handler)(item)).catch_unwind().await {
                (self.on_panic)(format!(
                    "an event of lane {key:?} panicked: {}",
                    panic_text(panic.as_ref())
                ));
                return;
            }
            let mut queues = self.lock();
            next = match queues.get_mut(&key).and_then(VecDeque::pop_front) {
                Some(item) => Some(item),
                None => {
                    queues.remove(&key);
                    None
                }
            };
        }
    }
}

/// What a panic said, when it said it with a string.
pub(super) fn panic_text(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn one_user_in_order_many_users_at_once() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let tasks = TaskTracker::new();
        let lanes = {
            let (log, running, peak) = (log.clone(), running.clone(), peak.clone());
            Lanes::new(
                tasks.clone(),
                move |(user, n): (String, u32)| {
                    let (log, running, peak) = (log.clone(), running.clone(), peak.clone());
                    async move {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(now, Ordering::SeqCst);
                        // Later items of a lane are faster: a race would reorder them.
                        tokio::time::sleep(Duration::from_millis(100 - u64::from(n) * 10)).await;
                        log.lock().unwrap().push((user, n));
                        running.fetch_sub(1, Ordering::SeqCst);
                    }
                },
                |panic| panic!("no handler panics here: {panic}"),
            )
        };
        for n in 0..5 {
            for user in ["a", "b", "c"] {
                lanes.submit(user.to_string(), (user.to_string(), n));
            }
        }
        tasks.close();
        tasks.wait().await;
        let log = log.lock().unwrap();
        for user in ["a", "b", "c"] {
            let order: Vec<u32> = log
                .iter()
                .filter(|(u, _)| u == user)
                .map(|(_, n)| *n)
                .collect();
            assert_eq!(order, vec![0, 1, 2, 3, 4], "lane {user}");
        }
        assert_eq!(peak.load(Ordering::SeqCst), 3, "three users ran at once");
        assert_eq!(lanes.active(), 0, "idle lanes are gone");
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_handler_is_reported_and_stops_only_its_lane() {
        let handled = Arc::new(Mutex::new(Vec::new()));
        let panics = Arc::new(Mutex::new(Vec::new()));
        let tasks = TaskTracker::new();
        let lanes = {
            let (handled, panics) = (handled.clone(), panics.clone());
            Lanes::new(
                tasks.clone(),
                move |(user, n): (&'static str, u32)| {
                    let handled = handled.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        if (user, n) == ("a", 1) {
                            panic!("boom");
                        }
                        handled.lock().unwrap().push((user, n));
                    }
                },
                move |panic| panics.lock().unwrap().push(panic),
            )
        };
        for n in 0..3 {
            for user in ["a", "b"] {
                lanes.submit(user.to_string(), (user, n));
            }
        }
        tasks.close();
        tasks.wait().await;
        let handled = handled.lock().unwrap();
        assert_eq!(
            *handled
                .iter()
                .filter(|(u, _)| *u == "a")
                .collect::<Vec<_>>(),
            [&("a", 0)]
        );
        assert_eq!(handled.iter().filter(|(u, _)| *u == "b").count(), 3);
        let panics = panics.lock().unwrap();
        assert_eq!(panics.len(), 1);
        assert!(
            panics[0].contains("\"a\"") && panics[0].contains("boom"),
            "{panics:?}"
        );
        assert_eq!(
            lanes.active(),
            1,
            "the panicked lane stays, holding its later event"
        );
    }
}
