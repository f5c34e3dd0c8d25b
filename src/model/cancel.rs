//! Cancelling a forward pass between blocks, the one way for every front
//! end: [`super::Model::forward`] calls [`check`] after every block. `serve`
//! sets a flag when the client that asked for the work disconnects (issue
//! #13 item 6, [`with_flag`]); the Python bindings ask Python whether Ctrl-C
//! was pressed (issue #12, [`with_check`]). Thread-local, so a worker thread
//! only ever sees the stop condition of the job it is running.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::{Error, Result};

/// A stop condition: `Err` ends the work in progress with that error.
type StopCheck = Box<dyn FnMut() -> Result<()>>;

thread_local! {
    static CHECK: RefCell<Option<StopCheck>> = const { RefCell::new(None) };
}

/// Run `f` on this thread with `check` called between blocks of every
/// forward pass it makes; the first `Err` from `check` ends the pass.
pub fn with_check<T>(check: StopCheck, f: impl FnOnce() -> T) -> T {
    let previous = CHECK.with(|c| c.replace(Some(check)));
    let out = f();
    CHECK.with(|c| *c.borrow_mut() = previous);
    out
}

/// Run `f` on this thread with `flag` as its cancellation flag: once it is
/// set, the forward pass stops with [`Error::Cancelled`].
pub fn with_flag<T>(flag: Arc<AtomicBool>, f: impl FnOnce() -> T) -> T {
    let check = move || {
        if flag.load(Ordering::Relaxed) {
            return Err(Error::Cancelled);
        }
        Ok(())
    };
    with_check(Box::new(check), f)
}

/// This thread's stop condition, if any: `Err` once the work should stop.
pub fn check() -> Result<()> {
    // Taken out while it runs, so a check that re-enters lensmap (a Python
    // signal handler calling it) finds none rather than a borrowed cell.
    let Some(mut f) = CHECK.with(|c| c.borrow_mut().take()) else {
        return Ok(());
    };
    let out = f();
    CHECK.with(|c| *c.borrow_mut() = Some(f));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_flag_stops_and_the_previous_check_comes_back() {
        let flag = Arc::new(AtomicBool::new(false));
        assert!(check().is_ok(), "no stop condition outside with_*");
        with_flag(Arc::clone(&flag), || {
            assert!(check().is_ok());
            // An inner caller's condition replaces the outer one, then yields it back.
            with_check(Box::new(|| Err(Error::Interrupted)), || {
                assert!(matches!(check(), Err(Error::Interrupted)));
            });
            flag.store(true, Ordering::Relaxed);
            assert!(matches!(check(), Err(Error::Cancelled)));
        });
        assert!(check().is_ok());
    }

    #[test]
    fn a_check_that_re_enters_finds_none() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        with_check(
            Box::new(move || {
                seen.fetch_add(1, Ordering::Relaxed);
                check() // as a Python signal handler calling lensmap would
            }),
            || assert!(check().is_ok()),
        );
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
