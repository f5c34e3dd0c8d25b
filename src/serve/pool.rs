//! A bounded pool of OS threads for the CPU-heavy work (forward pass, lens,
//! figure drawing), so the async runtime only moves bytes.
//!
//! At most `workers` jobs run at once and at most `queue` more wait; a job
//! offered beyond that is refused at once ([`Busy`]) and the handler answers
//! `503`. A job whose client has gone away before a worker picks it up is
//! skipped.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The pool was full: `workers` jobs running and `queue` waiting.
#[derive(Debug, Clone, Copy)]
pub struct Busy {
    pub workers: usize,
    pub queue: usize,
}

/// Jobs admitted and running, for `/api/health`.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub running: usize,
    pub waiting: usize,
}

#[derive(Default)]
struct Counters {
    /// Admitted and not yet finished (waiting + running).
    admitted: AtomicUsize,
    running: AtomicUsize,
}

/// Decrements `admitted` however the job ends (done, skipped, panicked).
struct Admission(Arc<Counters>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

pub struct WorkerPool {
    tx: Option<mpsc::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    counters: Arc<Counters>,
    workers: usize,
    queue: usize,
}

impl WorkerPool {
    /// Start `workers` threads (at least one) with room for `queue` waiting jobs.
    pub fn new(workers: usize, queue: usize) -> std::io::Result<Self> {
        let workers = workers.max(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut threads = Vec::with_capacity(workers);
        for i in 0..workers {
            let rx = Arc::clone(&rx);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("lensmap-worker-{i}"))
                    .spawn(move || loop {
                        // The lock is held only while waiting for the next job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the pool was dropped
                        }
                    })?,
            );
        }
        Ok(Self {
            tx: Some(tx),
            threads,
            counters: Arc::default(),
            workers,
            queue,
        })
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn queue(&self) -> usize {
        self.queue
    }

    pub fn load(&self) -> Load {
        let admitted = self.counters.admitted.load(Ordering::SeqCst);
        let running = self.counters.running.load(Ordering::SeqCst);
        Load {
            running,
            waiting: admitted.saturating_sub(running),
        }
    }

    /// Queue `f`, or refuse at once if `workers + queue` jobs are already in.
    /// The receiver yields `Err` if the job panicked.
    pub fn try_run<T, F>(&self, f: F) -> Result<oneshot::Receiver<T>, Busy>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let busy = Busy {
            workers: self.workers,
            queue: self.queue,
        };
        let capacity = self.workers + self.queue;
        self.counters
            .admitted
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < capacity).then_some(n + 1)
            })
            .map_err(|_| busy)?;
        let admission = Admission(Arc::clone(&self.counters));
        let counters = Arc::clone(&self.counters);
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                return; // the client went away while the job waited
            }
            counters.running.fetch_add(1, Ordering::SeqCst);
            let out = catch_unwind(AssertUnwindSafe(f));
            // Settle the counters before the answer is sent, so a health
            // check made right after the client has it sees this job gone
            // (admitted first: `waiting` is admitted − running).
            drop(admission);
            counters.running.fetch_sub(1, Ordering::SeqCst);
            if let Ok(out) = out {
                let _ = tx.send(out);
            }
        });
        match &self.tx {
            // Sending fails only once every worker has exited; the job (and
            // its admission) is dropped, and the receiver reports the failure.
            Some(sender) => {
                let _ = sender.send(job);
            }
            None => drop(job),
        }
        Ok(rx)
    }
}

impl Drop for WorkerPool {
    /// Let the workers finish what they hold, then join them.
    fn drop(&mut self) {
        drop(self.tx.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;

    #[test]
    fn bounded_admission() {
        let pool = WorkerPool::new(1, 1).unwrap();
        let gate = Arc::new(Barrier::new(2));
        let g = Arc::clone(&gate);
        let first = pool.try_run(move || {
            g.wait();
            1
        });
        let second = pool.try_run(|| 2);
        assert!(first.is_ok() && second.is_ok());
        assert!(pool.try_run(|| 3).is_err(), "a third job must be refused");
        gate.wait();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(first.unwrap()).unwrap(), 1);
        assert_eq!(rt.block_on(second.unwrap()).unwrap(), 2);
        // Admission is released after the job's result is sent.
        for _ in 0..1000 {
            if pool.load().running + pool.load().waiting == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(pool.try_run(|| 4).is_ok());
    }

    #[test]
    fn panics_are_contained() {
        let pool = WorkerPool::new(1, 0).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let rx = pool.try_run(|| -> u32 { panic!("boom") }).unwrap();
        assert!(rt.block_on(rx).is_err());
        for _ in 0..1000 {
            if let Ok(rx) = pool.try_run(|| 7) {
                assert_eq!(rt.block_on(rx).unwrap(), 7);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("the worker did not survive a panicking job");
    }
}
