//! Headless Chromium for the browser tests: find it (a missing browser fails
//! the test, it never skips it), run it on a page to dump the DOM or take a
//! screenshot, and read back what it printed.
//!
//! Needs Debian's `chromium` package (`/usr/bin/chromium`, or set `CHROMIUM`).
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The browser binary: `$CHROMIUM`, else the usual Debian paths; panics with
/// the install command when there is none.
pub fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    for p in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "headless Chromium not found (looked for $CHROMIUM, /usr/bin/chromium, /usr/bin/chromium-browser, \
         /usr/bin/google-chrome); install it with `apt-get install -y chromium`"
    );
}

/// `file://` URL of a local page.
pub fn file_url(page: &Path) -> String {
    format!("file://{}", page.display())
}

/// One way of running the browser on a page.
#[derive(Debug, Clone, Copy)]
pub struct Browser {
    /// `--virtual-time-budget`: how much (virtual) time the page's scripts get.
    pub virtual_time_ms: u64,
    /// `--window-size`, in CSS pixels (the device scale factor is 1).
    pub window: (u32, u32),
    /// Wall-clock limit; past it the browser's process group is killed and the test fails.
    pub timeout: Duration,
}

impl Browser {
    /// The DOM after the page's scripts ran (`--dump-dom`).
    pub fn dump_dom(&self, url: &str, profile: &Path) -> String {
        self.run(url, &["--dump-dom".into()], profile)
    }

    /// A PNG screenshot of the window, written to `png`.
    pub fn screenshot(&self, url: &str, png: &Path, profile: &Path) {
        self.run(url, &[format!("--screenshot={}", png.display())], profile);
    }

    /// Run headless Chromium on `url` with extra arguments and a fresh
    /// profile directory; returns its stdout. Fails the test if the browser
    /// cannot start, fails, or outlives [`Browser::timeout`].
    pub fn run(&self, url: &str, extra: &[String], profile: &Path) -> String {
        let mut cmd = Command::new(chromium());
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--virtual-time-budget={}", self.virtual_time_ms))
        .arg(format!("--window-size={},{}", self.window.0, self.window.1))
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        // Its own process group, so a hung browser can be ended with all its children.
        cmd.process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start Chromium: {e}"));
        // Drain both pipes while waiting: --dump-dom output is larger than a pipe buffer.
        let mut so = child.stdout.take().unwrap();
        let mut se = child.stderr.take().unwrap();
        let t_out = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = so.read_to_end(&mut v);
            v
        });
        let t_err = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = se.read_to_end(&mut v);
            v
        });
        let start = Instant::now();
        let status = loop {
            match child.try_wait().expect("wait for Chromium") {
                Some(status) => break status,
                None if start.elapsed() > self.timeout => {
                    let group = format!("-{}", child.id());
                    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
                    let _ = child.wait();
                    panic!(
                        "Chromium did not finish within {} s",
                        self.timeout.as_secs()
                    );
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let stdout = t_out.join().unwrap();
        let stderr = t_err.join().unwrap();
        assert!(
            status.success(),
            "Chromium failed ({status}): {}",
            String::from_utf8_lossy(&stderr)
        );
        String::from_utf8_lossy(&stdout).into_owned()
    }
}

/// Undo the entity escapes Chromium's DOM serialiser writes in text and
/// attribute values.
pub fn unescape_html(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}
