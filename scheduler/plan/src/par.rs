//! Scoped threads for the planner's independent pieces of work (per node,
//! per source). Results never depend on the number of threads.

/// `(0..n).map(f).collect()`, on up to `threads` threads over chunks of
/// consecutive indices, joined in order.
pub(crate) fn map<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if threads <= 1 || n < PARALLEL_MIN {
        return (0..n).map(f).collect();
    }
    // A few chunks per thread, so that a thread slowed down by others
    // does not hold up the rest.
    let chunk = n.div_ceil(4 * threads);
    let chunks = tasks(n.div_ceil(chunk), threads, |c| {
        (c * chunk..n.min((c + 1) * chunk))
            .map(&f)
            .collect::<Vec<T>>()
    });
    chunks.into_iter().flatten().collect()
}

/// Below this many items the work stays on the calling thread.
const PARALLEL_MIN: usize = 256;

/// `(0..tasks).map(f).collect()`: the tasks are taken in turn by up to
/// `threads` threads (the caller one of them), so a thread that is done
/// early takes more; the results come in task order.
pub(crate) fn tasks<T: Send>(
    tasks: usize,
    threads: usize,
    f: impl Fn(usize) -> T + Sync,
) -> Vec<T> {
    let threads = threads.min(tasks);
    if threads <= 1 {
        return (0..tasks).map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let run = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= tasks {
                return done;
            }
            done.push((i, f(i)));
        }
    };
    let mut done = std::thread::scope(|scope| {
        let helpers: Vec<_> = (1..threads).map(|_| scope.spawn(run)).collect();
        let mut done = run();
        for helper in helpers {
            done.extend(joined(helper));
        }
        done
    });
    done.sort_unstable_by_key(|&(i, _)| i);
    done.into_iter().map(|(_, value)| value).collect()
}

/// The result of a scoped thread; a panic in it (a planner bug) is
/// re-raised here.
pub(crate) fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    match handle.join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
