//! Cancelling a forward pass between blocks: `serve` sets a flag when the
//! client that asked for it disconnects, and [`super::Model::forward`] checks
//! it after every block (issue #13 item 6). Thread-local, so a worker thread
//! only ever sees the flag of the job it is running.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::{Error, Result};

thread_local! {
    static FLAG: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Run `f` on this thread with `flag` as its cancellation flag.
pub fn with_flag<T>(flag: Arc<AtomicBool>, f: impl FnOnce() -> T) -> T {
    let previous = FLAG.with(|c| c.replace(Some(flag)));
    let out = f();
    FLAG.with(|c| *c.borrow_mut() = previous);
    out
}

/// `Err(Error::Cancelled)` once this thread's flag is set.
pub fn check() -> Result<()> {
    let set = FLAG.with(|c| {
        c.borrow()
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
    });
    if set {
        return Err(Error::Cancelled);
    }
    Ok(())
}
