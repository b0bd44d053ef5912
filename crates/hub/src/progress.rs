//! Download progress on stderr: two bars (this file, all files; indicatif) on a terminal, one
//! line per finished file and one every 10 seconds otherwise, or nothing.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    /// Bars when stderr is a terminal, lines otherwise.
    Auto,
    /// Bars redrawn in place (at most 10 times a second).
    Bars,
    /// One line per downloaded file, and notes (resuming, waiting for a lock).
    Lines,
    /// Nothing at all.
    Quiet,
}

/// How often a line says how far a download is, when stderr is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(10);

pub(crate) struct Progress {
    mode: ProgressMode,
    /// Bytes to fetch over all files, and fetched so far (counting resumed prefixes).
    total: u64,
    done: u64,
    /// Bytes received in this run, for the rates (a resumed prefix did not take any time).
    received: u64,
    started: Instant,
    file: Option<FileBar>,
    /// When the last progress line was printed (lines mode).
    last_line: Option<Instant>,
    files_done: usize,
    files_total: usize,
    /// The two bars on a terminal (indicatif): this file, all files.
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    file: ProgressBar,
    total: ProgressBar,
}

struct FileBar {
    name: String,
    size: u64,
    done: u64,
    received: u64,
    started: Instant,
}

const BAR_TEMPLATE: &str = "{msg:34} [{bar:20}] {bytes:>9} / {total_bytes:>9}  {bytes_per_sec:>11}  ETA {eta}";

impl Progress {
    pub fn new(mode: ProgressMode, files_total: usize, total: u64) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bars,
            ProgressMode::Auto => ProgressMode::Lines,
            m => m,
        };
        if mode == ProgressMode::Lines && files_total > 0 {
            eprintln!("downloading {files_total} file(s), {}", bytes(total));
        }
        let bars = (mode == ProgressMode::Bars && files_total > 0).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let style = ProgressStyle::with_template(BAR_TEMPLATE)
                .map(|s| s.progress_chars("#>."))
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            let file = multi.add(ProgressBar::new(0).with_style(style.clone()));
            let total_bar = multi.add(ProgressBar::new(total).with_style(style));
            total_bar.set_message(format!("total (0/{files_total} files)"));
            Bars { multi, file, total: total_bar }
        });
        Progress {
            mode,
            total,
            done: 0,
            received: 0,
            started: Instant::now(),
            file: None,
            last_line: None,
            files_done: 0,
            files_total,
            bars,
        }
    }

    /// A line of its own (above the bars, which are drawn again after it).
    pub fn note(&mut self, text: &str) {
        match (&self.bars, self.mode) {
            (_, ProgressMode::Quiet) => {}
            (Some(b), _) => {
                if b.multi.println(text).is_err() {
                    eprintln!("{text}");
                }
            }
            (None, _) => eprintln!("{text}"),
        }
    }

    pub fn start_file(&mut self, name: &str, size: u64, already: u64) {
        self.done += already;
        self.file = Some(FileBar { name: name.to_string(), size, done: already, received: 0, started: Instant::now() });
        if let Some(b) = &self.bars {
            b.file.set_message(truncate(name, 34));
            b.file.set_length(size);
            b.file.set_position(already);
            b.file.reset_eta();
            b.total.set_position(self.done);
        }
    }

    pub fn advance(&mut self, n: u64) {
        self.done += n;
        self.received += n;
        if let Some(f) = &mut self.file {
            f.done += n;
            f.received += n;
        }
        if let Some(b) = &self.bars {
            b.file.inc(n);
            b.total.inc(n);
        }
        if self.mode == ProgressMode::Lines {
            let now = Instant::now();
            let since = self.last_line.unwrap_or(self.started);
            if now - since >= LINE_EVERY {
                self.last_line = Some(now);
                eprintln!("{}", self.line());
            }
        }
    }

    /// One line for logs: this file and the total, with the rate and the time left.
    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let speed = self.received as f64 / secs.max(1e-3);
        let file = match &self.file {
            Some(f) => format!("{} {} of {}; ", f.name, bytes(f.done), bytes(f.size)),
            None => String::new(),
        };
        format!(
            "downloading: {file}total {} of {} ({}%), {}, ETA {}",
            bytes(self.done),
            bytes(self.total),
            (self.done * 100).checked_div(self.total).unwrap_or(100),
            rate(self.received, secs),
            eta(self.total.saturating_sub(self.done), speed)
        )
    }

    /// The server ignored a resume and sends the file from its start: forget the prefix.
    pub fn restart_file(&mut self) {
        if let Some(f) = &mut self.file {
            self.done -= f.done.min(self.done);
            f.done = 0;
        }
        if let Some(b) = &self.bars {
            b.file.set_position(0);
            b.total.set_position(self.done);
        }
    }

    pub fn finish_file(&mut self) {
        let Some(f) = self.file.take() else { return };
        self.files_done += 1;
        if self.mode == ProgressMode::Lines {
            let secs = f.started.elapsed().as_secs_f64();
            let resumed = f.size.saturating_sub(f.received);
            let resumed = if resumed > 0 { format!(", resumed at {}", bytes(resumed)) } else { String::new() };
            eprintln!("fetched {} ({}{resumed}) in {secs:.1} s, {}", f.name, bytes(f.size), rate(f.received, secs));
        }
        if let Some(b) = &self.bars {
            b.total.set_message(format!("total ({}/{} files)", self.files_done, self.files_total));
        }
    }

    /// Bytes received in this run (not counting resumed prefixes).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Leaves the terminal clean after the last file.
    pub fn finish(&mut self) {
        if let Some(b) = self.bars.take() {
            b.file.finish_and_clear();
            b.total.finish_and_clear();
            let _ = b.multi.clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // An error leaves the bars where they are (abandoned); the message goes below them.
        if let Some(b) = self.bars.take() {
            b.file.abandon();
            b.total.abandon();
        }
    }
}

fn truncate(name: &str, width: usize) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= width {
        name.to_string()
    } else {
        let tail: String = chars[chars.len() - (width - 1)..].iter().collect();
        format!("…{tail}")
    }
}

/// Decimal units, as download sizes are counted.
pub(crate) fn bytes(b: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", units[u])
    }
}

fn rate(received: u64, secs: f64) -> String {
    if secs <= 0.0 || received == 0 {
        return "- MB/s".into();
    }
    format!("{:.1} MB/s", received as f64 / secs / 1e6)
}

fn eta(remaining: u64, speed: f64) -> String {
    if remaining == 0 {
        return "0:00".into();
    }
    if speed < 1.0 {
        return "-:--".into();
    }
    let s = (remaining as f64 / speed).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(13_761_264_768), "13.76 GB");
        assert_eq!(eta(0, 10.0), "0:00");
        assert_eq!(eta(125, 1.0), "2:05");
        assert_eq!(eta(7_300, 1.0), "2:01:40");
        assert_eq!(truncate("model-00001-of-00002.safetensors", 10), "…fetensors");
    }
}
