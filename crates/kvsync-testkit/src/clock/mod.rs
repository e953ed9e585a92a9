//! A process's wall clock, moved by a test: an `LD_PRELOAD` shim (built here with the C
//! compiler) shifts `CLOCK_REALTIME` by an offset read from a file, which the test can
//! rewrite while the process runs. Monotonic clocks are untouched.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const SOURCE: &str = include_str!("shim.c");

/// Builds the shim into `dir` (once per directory) and returns the library's path.
pub fn build_shim(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let lib = dir.join("libkvsync_clockshim.so");
    if lib.is_file() {
        return Ok(lib);
    }
    let src = dir.join("clockshim.c");
    std::fs::write(&src, SOURCE)?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = std::process::Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output()
        .with_context(|| format!("running {cc} to build the clock shim"))?;
    if !out.status.success() {
        bail!(
            "building the clock shim failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(lib)
}

/// The offset file of one process's shifted clock.
#[derive(Debug, Clone)]
pub struct ClockOffset {
    pub file: PathBuf,
}

impl ClockOffset {
    /// The environment a process needs to run with its clock shifted by this file.
    pub fn env(&self, shim: &Path) -> Vec<(String, String)> {
        vec![
            ("LD_PRELOAD".into(), shim.display().to_string()),
            (
                "KVSYNC_TEST_CLOCK_OFFSET_FILE".into(),
                self.file.display().to_string(),
            ),
        ]
    }

    /// Moves the clock to `ms` milliseconds from real time (negative: behind).
    pub fn set(&self, ms: i64) -> Result<()> {
        // Written whole then renamed, so the shim never reads half a number.
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, ms.to_string())?;
        std::fs::rename(&tmp, &self.file)?;
        Ok(())
    }
}
