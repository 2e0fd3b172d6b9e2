//! Stopping a long build step when the caller asks (Ctrl-C, in Python).
//!
//! A build asks its [`Cancel`] now and then on the thread that started it: the Python
//! binding's answers whether a signal arrived, which Python sees only on its main
//! thread, so work that runs on other threads (the HNSW graph's) is started through
//! [`run`], which keeps the calling thread free to ask.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use crate::error::IndexError;

/// How often [`run`] asks while its work runs: a stop is seen within this, plus the
/// time the work takes to notice its flag.
const POLL: Duration = Duration::from_millis(50);

/// Whether to stop: asked between pieces of work on the thread that started a build;
/// `true` ends the build with [`IndexError::Cancelled`]. The default never stops.
#[derive(Clone, Default)]
pub struct Cancel(Option<Arc<dyn Fn() -> bool + Send + Sync>>);

impl Cancel {
    /// A cancel that stops once `requested` returns true.
    pub fn new(requested: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Cancel(Some(Arc::new(requested)))
    }

    /// Whether the caller asks to stop.
    pub fn requested(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f())
    }

    /// `Err(Cancelled)` when the caller asks to stop.
    pub fn check(&self) -> Result<(), IndexError> {
        if self.requested() {
            Err(IndexError::Cancelled)
        } else {
            Ok(())
        }
    }
}

impl fmt::Debug for Cancel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Cancel(set)"
        } else {
            "Cancel(never)"
        })
    }
}

/// Runs `work` on another thread while this one asks `cancel` every [`POLL`]; once it
/// says stop, raises the flag `work` watches, waits for `work` to return and returns
/// `Cancelled`.
pub(crate) fn run<T: Send>(
    cancel: &Cancel,
    work: impl FnOnce(&AtomicBool) -> Result<T, IndexError> + Send,
) -> Result<T, IndexError> {
    let stop = AtomicBool::new(false);
    if cancel.0.is_none() {
        return work(&stop);
    }
    cancel.check()?;
    std::thread::scope(|scope| {
        let (done, finished) = mpsc::channel::<()>();
        let stop = &stop;
        let worker = scope.spawn(move || {
            let result = work(stop);
            drop(done);
            result
        });
        let mut cancelled = false;
        while let Err(RecvTimeoutError::Timeout) = finished.recv_timeout(POLL) {
            if !cancelled && cancel.requested() {
                stop.store(true, Ordering::Relaxed);
                cancelled = true;
            }
        }
        let result = worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        if cancelled {
            Err(IndexError::Cancelled)
        } else {
            result
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    #[test]
    fn a_cancel_stops_the_work_on_the_other_thread() {
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = asked.clone();
        // Says stop the third time it is asked.
        let cancel = Cancel::new(move || counter.fetch_add(1, Ordering::Relaxed) >= 2);
        let started = Instant::now();
        let result = run(&cancel, |stop| {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(1)
        });
        assert!(matches!(result, Err(IndexError::Cancelled)));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            asked.load(Ordering::Relaxed),
            3,
            "once before, then while it runs"
        );

        assert_eq!(run(&Cancel::new(|| false), |_| Ok(7)).unwrap(), 7);
        assert_eq!(run(&Cancel::default(), |_| Ok(8)).unwrap(), 8);
        assert!(Cancel::default().check().is_ok());
        assert!(matches!(Cancel::new(|| true).check(), Err(IndexError::Cancelled)));
    }
}
