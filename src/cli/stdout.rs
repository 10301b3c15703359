//! Data lines on stdout for the CLI's commands (`out!`, `out_raw`).
//!
//! Guarantee: a reader that stops reading (`outboxd events | head -1`)
//! ends the command quietly with exit 141, as a process killed by SIGPIPE
//! reports in a shell, never a panic with a backtrace (`println!` panics on
//! a closed pipe, and Rust ignores SIGPIPE). Any other write error is
//! reported on stderr in one line, exit 1. Each line is flushed as written.

use std::io::Write;

/// The exit code of a command whose stdout reader went away.
pub const CLOSED_PIPE: i32 = 141;

/// Writes `text` to stdout as is (no newline added).
pub fn out_raw(text: &str) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(CLOSED_PIPE);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` for data lines: see the module's guarantee.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::stdout::out_raw(&format!("{}\n", format_args!($($arg)*)))
    };
}
