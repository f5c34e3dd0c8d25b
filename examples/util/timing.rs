//! Shared by the benchmark examples (`#[path = "util/timing.rs"] mod timing;`).

use std::time::Instant;

/// The best of `reps` timed calls of `f`, in seconds, after one untimed
/// warm-up call (page faults, the thread pool).
pub fn best_of(reps: usize, f: &mut dyn FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
