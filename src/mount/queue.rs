//! A work queue for the mount's thread pools that never spins.
//!
//! A waiting worker sleeps on a condition variable at once. Channels that
//! spin and yield before they sleep (crossbeam's, std's) cost the mount a
//! tenth of its CPU time when `tar` read many small files on 2 cores: each
//! hand-off woke a worker that then spun for the next one, competing with
//! the reader it was serving.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// Workers still running; none left means nothing would run an item.
    alive: usize,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    bound: usize,
}

/// The sending end; dropping it lets the workers finish what is queued
/// and end.
pub(crate) struct Queue<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Queue<T> {
    /// Queues `item`; gives it back when the queue holds its bound already
    /// or no worker is left to run it.
    pub fn push(&self, item: T) -> Result<(), T> {
        let mut s = self.shared.state.lock().expect("queue");
        if s.alive == 0 || s.items.len() >= self.shared.bound {
            return Err(item);
        }
        s.items.push_back(item);
        drop(s);
        self.shared.ready.notify_one();
        Ok(())
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        self.shared.state.lock().expect("queue").closed = true;
        self.shared.ready.notify_all();
    }
}

/// Counts a worker out when it ends, also by a panic in a job.
struct Alive<T>(Arc<Shared<T>>);

impl<T> Drop for Alive<T> {
    fn drop(&mut self) {
        let orphans = match self.0.state.lock() {
            Ok(mut s) => {
                s.alive -= 1;
                // The last worker gone: nothing would run what is queued.
                // Dropped outside the lock (a FUSE job's reply then
                // answers EIO).
                if s.alive == 0 {
                    std::mem::take(&mut s.items)
                } else {
                    VecDeque::new()
                }
            }
            Err(_) => VecDeque::new(),
        };
        drop(orphans);
    }
}

/// Starts `n` threads named `name-<i>` that run `job` on each item pushed
/// to the returned queue (of at most `bound` waiting items); they end when
/// the queue is dropped and empty. None if `n` is 0 or no thread could
/// start.
pub(crate) fn workers<T: Send + 'static>(
    name: &str,
    n: usize,
    bound: usize,
    job: impl Fn(T) + Send + Sync + 'static,
) -> Option<(Queue<T>, Vec<JoinHandle<()>>)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            closed: false,
            alive: n,
        }),
        ready: Condvar::new(),
        bound,
    });
    let job = Arc::new(job);
    let mut started = Vec::new();
    for i in 0..n {
        let (mine, job) = (shared.clone(), job.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || {
                let alive = Alive(mine);
                let shared = &alive.0;
                loop {
                    let item = {
                        let mut s = shared.state.lock().expect("queue");
                        loop {
                            if let Some(item) = s.items.pop_front() {
                                break item;
                            }
                            if s.closed {
                                return;
                            }
                            s = shared.ready.wait(s).expect("queue");
                        }
                    };
                    job(item);
                }
            });
        match spawned {
            Ok(t) => started.push(t),
            Err(_) => shared.state.lock().expect("queue").alive -= 1,
        }
    }
    (!started.is_empty()).then_some((Queue { shared }, started))
}

#[cfg(test)]
mod tests {
    use super::workers;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn runs_every_item_then_ends_when_dropped() {
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let (q, threads) = workers("t", 3, usize::MAX, move |n: usize| {
            d.fetch_add(n, Ordering::SeqCst);
        })
        .unwrap();
        for n in 1..=100 {
            assert!(q.push(n).is_ok());
        }
        drop(q);
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 5050);
    }

    #[test]
    fn a_full_queue_gives_the_item_back() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = std::sync::Mutex::new(rx);
        // One worker, held by the first item until the test lets it go.
        let (q, threads) = workers("t", 1, 2, move |_: u32| {
            let _ = rx.lock().unwrap().recv();
        })
        .unwrap();
        assert!(q.push(0).is_ok());
        // The worker takes item 0 off the queue; then 2 fit, the third not.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while q.push(1).is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(q.push(2).is_ok());
        assert_eq!(q.push(3), Err(3));
        for _ in 0..3 {
            tx.send(()).unwrap();
        }
        drop(q);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn no_worker_left_gives_the_item_back() {
        let (q, threads) = workers("t", 1, usize::MAX, |_: u32| panic!("job failed")).unwrap();
        assert!(q.push(1).is_ok());
        for t in threads {
            assert!(t.join().is_err());
        }
        assert_eq!(q.push(2), Err(2));
    }
}
