//! How the binary talks on the terminal: verbosity (`-q`, `-v`), colour (`--color`,
//! `NO_COLOR`), and spinners for the waits (indicatif).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// `--color`: when to use colours and dimming.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ColorChoice {
    /// On a terminal, unless NO_COLOR is set.
    #[default]
    Auto,
    /// Even when piped.
    Always,
    /// Plain text.
    Never,
}

/// How much the binary says on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// `-q`: errors and the results only; no notes, spinners or progress.
    Quiet = 0,
    Normal = 1,
    /// `-v`: also what is read and decided along the way.
    Verbose = 2,
}

static VERBOSITY: AtomicU8 = AtomicU8::new(Verbosity::Normal as u8);
static COLOR: AtomicU8 = AtomicU8::new(0);

pub fn set(verbosity: Verbosity, color: ColorChoice) {
    VERBOSITY.store(verbosity as u8, Ordering::Relaxed);
    COLOR.store(color as u8, Ordering::Relaxed);
}

pub fn verbosity() -> Verbosity {
    match VERBOSITY.load(Ordering::Relaxed) {
        0 => Verbosity::Quiet,
        1 => Verbosity::Normal,
        _ => Verbosity::Verbose,
    }
}

pub fn quiet() -> bool {
    verbosity() == Verbosity::Quiet
}

pub fn verbose() -> bool {
    verbosity() == Verbosity::Verbose
}

/// Whether to style text for a stream that is (or is not) a terminal: `--color always` and
/// `never` decide; `auto` styles a terminal unless NO_COLOR is set to anything non-empty.
pub fn color(is_terminal: bool) -> bool {
    let choice = match COLOR.load(Ordering::Relaxed) {
        1 => ColorChoice::Always,
        2 => ColorChoice::Never,
        _ => ColorChoice::Auto,
    };
    color_for(choice, is_terminal, std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()))
}

fn color_for(choice: ColorChoice, is_terminal: bool, no_color: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => is_terminal && !no_color,
    }
}

/// A note on stderr (what was loaded, picked, how fast), unless `-q`.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        if !$crate::cmd::ui::quiet() {
            eprintln!($($arg)*);
        }
    };
}

/// `text` dimmed when `on`.
pub fn dim(text: &str, on: bool) -> String {
    if on && !text.is_empty() {
        format!("\x1b[2m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// A spinner with the elapsed time on stderr, for a wait of unknown length; drawn only when
/// stderr is a terminal and not `-q`. Finish it with `finish_and_clear`.
pub fn spinner(message: &str) -> ProgressBar {
    if quiet() || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    bar.set_style(style);
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_and_the_flag() {
        assert!(color_for(ColorChoice::Auto, true, false));
        assert!(!color_for(ColorChoice::Auto, true, true), "NO_COLOR turns auto off");
        assert!(!color_for(ColorChoice::Auto, false, false), "not a terminal");
        assert!(color_for(ColorChoice::Always, false, true), "always beats NO_COLOR");
        assert!(!color_for(ColorChoice::Never, true, false));
        assert_eq!(dim("x", false), "x");
        assert_eq!(dim("x", true), "\x1b[2mx\x1b[0m");
    }
}
