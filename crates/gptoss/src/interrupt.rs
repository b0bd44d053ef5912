//! Ctrl-C: while an answer is being generated it stops that answer; at the prompt, pressing
//! it twice within two seconds quits. Everything the signal handler does is async-signal-safe
//! (atomics, clock_gettime, write, _exit).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

static GENERATING: AtomicBool = AtomicBool::new(false);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static LAST_AT_PROMPT: AtomicI64 = AtomicI64::new(i64::MIN / 2);

/// Installs the handler (once, for interactive commands).
pub fn install() {
    imp::install();
}

/// Marks whether an answer is being generated.
pub fn set_generating(on: bool) {
    INTERRUPTED.store(false, Ordering::SeqCst);
    GENERATING.store(on, Ordering::SeqCst);
}

/// True once Ctrl-C was pressed during the current answer.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

#[cfg(unix)]
mod imp {
    use super::*;

    extern "C" fn on_sigint(_: libc::c_int) {
        if GENERATING.load(Ordering::SeqCst) {
            INTERRUPTED.store(true, Ordering::SeqCst);
            return;
        }
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime, write and _exit are async-signal-safe.
        unsafe {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
            #[allow(clippy::unnecessary_cast)] // time_t is not i64 everywhere
            let now = ts.tv_sec as i64;
            if now - LAST_AT_PROMPT.swap(now, Ordering::SeqCst) < 2 {
                libc::_exit(130);
            }
            let msg = b"\n(Ctrl-C again to quit, or type /quit)\n";
            libc::write(2, msg.as_ptr().cast(), msg.len());
        }
    }

    pub fn install() {
        // SAFETY: installs a handler that only touches atomics and async-signal-safe calls.
        unsafe {
            libc::signal(libc::SIGINT, on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t);
        }
    }
}

#[cfg(not(unix))]
mod imp {
    /// Elsewhere Ctrl-C keeps its default meaning (quit).
    pub fn install() {}
}
