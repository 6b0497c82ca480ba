//! Rate-limited logging for lines a guest can cause.
//!
//! A guest repeats whatever it likes (a register write, a reset, a bad chain) as fast as it
//! likes, so a log line it can trigger must not reach the host's log once per trigger. Each call
//! site of [`warn_limited!`](crate::warn_limited), [`error_limited!`](crate::error_limited) or
//! [`info_limited!`](crate::info_limited) logs at most [`LINES_PER_WINDOW`] lines per
//! [`WINDOW`]; the rest are counted, and the site's first line of a later window is preceded by
//! one line saying how many were suppressed. Whatever the guest does, each site adds at most
//! `LINES_PER_WINDOW + 1` lines a minute.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How many lines one call site may log per window.
pub const LINES_PER_WINDOW: u32 = 10;
/// The window the limit applies to.
pub const WINDOW: Duration = Duration::from_secs(60);

/// What a call site should do with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Log it, after a summary line if `suppressed` lines were dropped since the last one logged.
    Log { suppressed: u64 },
    /// Drop it (counted).
    Suppress,
}

#[derive(Debug)]
struct LimitState {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// The limit of one call site (a `static` the macros declare).
#[derive(Debug)]
pub struct LogLimit {
    state: Mutex<LimitState>,
}

impl LogLimit {
    pub const fn new() -> LogLimit {
        LogLimit {
            state: Mutex::new(LimitState {
                window_start: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be logged now.
    pub fn admit(&self) -> Admit {
        self.admit_at(Instant::now())
    }

    /// Whether a line may be logged at `now`.
    pub fn admit_at(&self, now: Instant) -> Admit {
        // The state is three counters, consistent at every step: a poisoned lock is usable.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let expired = state
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= WINDOW);
        if expired {
            state.window_start = Some(now);
            state.logged = 0;
        }
        if state.logged < LINES_PER_WINDOW {
            state.logged += 1;
            Admit::Log {
                suppressed: std::mem::take(&mut state.suppressed),
            }
        } else {
            state.suppressed = state.suppressed.saturating_add(1);
            Admit::Suppress
        }
    }
}

impl Default for LogLimit {
    fn default() -> LogLimit {
        LogLimit::new()
    }
}

/// Logs at `$level` through this call site's [`LogLimit`](crate::log_limit::LogLimit).
#[macro_export]
macro_rules! log_limited {
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        if ::log::log_enabled!($level) {
            if let $crate::log_limit::Admit::Log { suppressed } = LIMIT.admit() {
                if suppressed > 0 {
                    ::log::log!(
                        $level,
                        "({suppressed} more lines like the next were suppressed: at most {} a minute)",
                        $crate::log_limit::LINES_PER_WINDOW
                    );
                }
                ::log::log!($level, $($arg)+);
            }
        }
    }};
}

/// `log::warn!`, at most [`LINES_PER_WINDOW`](crate::log_limit::LINES_PER_WINDOW) lines a minute
/// from this call site: for anything a guest can make happen again and again.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => { $crate::log_limited!(::log::Level::Warn, $($arg)+) };
}

/// `log::error!`, rate-limited like [`warn_limited!`](crate::warn_limited).
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => { $crate::log_limited!(::log::Level::Error, $($arg)+) };
}

/// `log::info!`, rate-limited like [`warn_limited!`](crate::warn_limited).
#[macro_export]
macro_rules! info_limited {
    ($($arg:tt)+) => { $crate::log_limited!(::log::Level::Info, $($arg)+) };
}

/// A logger that captures the lines logged on the calling thread, for tests.
#[cfg(test)]
pub(crate) mod capture {
    use std::cell::RefCell;
    use std::sync::OnceLock;

    struct CaptureLogger;

    thread_local! {
        static LINES: RefCell<Option<Vec<(log::Level, String)>>> = const { RefCell::new(None) };
    }

    impl log::Log for CaptureLogger {
        fn enabled(&self, _metadata: &log::Metadata) -> bool {
            true
        }

        fn log(&self, record: &log::Record) {
            LINES.with(|lines| {
                if let Some(lines) = lines.borrow_mut().as_mut() {
                    lines.push((record.level(), record.args().to_string()));
                }
            });
        }

        fn flush(&self) {}
    }

    /// Runs `f` and returns the lines at info level or above that it logged on this thread
    /// (the levels Canto's host log shows).
    pub(crate) fn lines_logged_by(f: impl FnOnce()) -> Vec<(log::Level, String)> {
        static INSTALLED: OnceLock<bool> = OnceLock::new();
        let installed = *INSTALLED.get_or_init(|| {
            let ok = log::set_logger(&CaptureLogger).is_ok();
            if ok {
                log::set_max_level(log::LevelFilter::Info);
            }
            ok
        });
        assert!(installed, "another logger is installed in this test binary");
        LINES.with(|lines| *lines.borrow_mut() = Some(Vec::new()));
        f();
        LINES.with(|lines| lines.borrow_mut().take().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_logs_a_bounded_number_per_window_then_summarizes() {
        let limit = LogLimit::new();
        let start = Instant::now();
        let admitted = (0..1000)
            .filter(|_| limit.admit_at(start) != Admit::Suppress)
            .count();
        assert_eq!(admitted, LINES_PER_WINDOW as usize);
        // Still inside the window: nothing more.
        assert_eq!(
            limit.admit_at(start + WINDOW - Duration::from_millis(1)),
            Admit::Suppress
        );
        // The next window's first line carries the count of the dropped ones.
        assert_eq!(
            limit.admit_at(start + WINDOW),
            Admit::Log {
                suppressed: 1000 - u64::from(LINES_PER_WINDOW) + 1
            }
        );
        assert_eq!(limit.admit_at(start + WINDOW), Admit::Log { suppressed: 0 });
    }

    #[test]
    fn the_macros_log_through_the_limit() {
        let lines = capture::lines_logged_by(|| {
            for i in 0..3000 {
                crate::warn_limited!("line {i}");
            }
            crate::error_limited!("an error");
            crate::info_limited!("some info");
        });
        assert_eq!(lines.len(), LINES_PER_WINDOW as usize + 2, "{lines:?}");
        assert_eq!(lines[0], (log::Level::Warn, "line 0".to_string()));
        assert!(lines.iter().any(|(l, _)| *l == log::Level::Error));
    }
}
