//! The fuzz step of `cargo xtask test`: builds the cargo-fuzz targets in `fuzz/` (their own
//! workspace, nightly with AddressSanitizer, into `target/fuzz`) and runs each for a bounded
//! time from the committed seed corpus. A panic, a hang (one input over [`INPUT_TIMEOUT_S`])
//! or running out of [`RSS_LIMIT_MB`] fails the step, naming the input libFuzzer saved.
//!
//! It must not touch the committed seeds: libFuzzer writes what it finds to a working corpus
//! under `target/fuzz/corpus/`, and reads the seeds from `fuzz/corpus/` alongside.
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// The targets (`fuzz/fuzz_targets/NAME.rs`), each with a seed corpus and a dictionary.
pub const TARGETS: &[&str] = &[
    "request_body",
    "selectors",
    "cni_config",
    "protobuf_body",
    "bgp_message",
];

/// How long each target runs.
const SECONDS_PER_TARGET: u64 = 30;
/// Longest one input may take before libFuzzer calls it a hang.
const INPUT_TIMEOUT_S: u64 = 10;
/// Memory the fuzzer process may reach (AddressSanitizer's quarantine included).
const RSS_LIMIT_MB: u64 = 2048;
/// Beyond the fuzzing time, how long a run may take to start and report before it is killed
/// (`cargo fuzz run` rebuilds first when the sources changed since the build).
const GRACE: Duration = Duration::from_secs(600);

/// What one bounded run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The target.
    pub target: &'static str,
    /// Inputs executed.
    pub runs: u64,
    /// Average executions per second.
    pub execs_per_sec: u64,
    /// Peak resident memory of the fuzzer, MB.
    pub peak_rss_mb: u64,
    /// Wall time of the run.
    pub took: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fuzz {}: {} runs in {:.0} s ({} exec/s, peak RSS {} MB), no panic, no hang",
            self.target,
            self.runs,
            self.took.as_secs_f64(),
            self.execs_per_sec,
            self.peak_rss_mb
        )
    }
}

/// Builds every target, then runs each; fails at the first target that finds something.
pub fn run_all() -> anyhow::Result<Vec<Summary>> {
    let dirs = Dirs::new();
    println!("fuzz: building the targets (nightly, AddressSanitizer) into target/fuzz");
    let status = dirs
        .cargo_fuzz(&["build"])
        .status()
        .context("running `cargo +nightly fuzz build` (`cargo xtask deps` installs cargo-fuzz)")?;
    if !status.success() {
        bail!("building the fuzz targets failed: {status}");
    }
    let mut summaries = Vec::new();
    for target in TARGETS {
        let summary = run_one(&dirs, target)?;
        println!("{summary}");
        summaries.push(summary);
    }
    Ok(summaries)
}

/// Where the fuzz crate, its build and its working files live.
struct Dirs {
    /// `fuzz/`: the crate, seeds (`corpus/NAME`) and dictionaries (`dicts/NAME.dict`).
    crate_dir: PathBuf,
    /// `target/fuzz`: the build, working corpora and logs.
    work: PathBuf,
}

impl Dirs {
    fn new() -> Self {
        let root = crate::workspace_root();
        Self {
            crate_dir: root.join("fuzz"),
            work: root.join("target").join("fuzz"),
        }
    }

    /// `cargo +nightly fuzz ARGS --target-dir target/fuzz`, in `fuzz/`, without the settings
    /// of the cargo that runs xtask (its toolchain, wrappers, flags).
    fn cargo_fuzz(&self, args: &[&str]) -> Command {
        let mut command = Command::new("rustup");
        command
            .args(["run", "nightly", "cargo", "fuzz"])
            .args(args)
            .arg("--target-dir")
            .arg(&self.work)
            .current_dir(&self.crate_dir);
        for (key, _) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            let setting = (key.starts_with("CARGO") && key != "CARGO_HOME")
                || key.starts_with("RUSTC")
                || (key.starts_with("RUSTUP") && key != "RUSTUP_HOME")
                || key == "RUSTFLAGS"
                || key == "RUSTDOCFLAGS";
            if setting {
                command.env_remove(key);
            }
        }
        command
    }
}

fn run_one(dirs: &Dirs, target: &'static str) -> anyhow::Result<Summary> {
    let corpus = dirs.work.join("corpus").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let seeds = dirs.crate_dir.join("corpus").join(target);
    let dict = dirs.crate_dir.join("dicts").join(format!("{target}.dict"));
    let log_path = dirs.work.join(format!("{target}.log"));
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = dirs.cargo_fuzz(&["run", target]);
    command
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-dict={}", dict.display()))
        .arg(format!("-max_total_time={SECONDS_PER_TARGET}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_S}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        // Leak checks stay on: the only memory kept for good (CRD names interned in
        // `resources::intern`) stays reachable from its table.
        .arg("-print_final_stats=1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    println!(
        "fuzz: running {target} for {SECONDS_PER_TARGET} s (log: {})",
        log_path.display()
    );
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("running `cargo +nightly fuzz run {target}`"))?;
    let deadline = started + Duration::from_secs(SECONDS_PER_TARGET) + GRACE;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            // Only our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
            print_tail(&log_path);
            bail!(
                "fuzz target {target} did not finish in time; log: {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = started.elapsed();
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        print_tail(&log_path);
        bail!(
            "fuzz target {target} failed ({status}); the input is under fuzz/artifacts/{target}/ \
             (reproduce with `cargo +nightly fuzz run {target} fuzz/artifacts/{target}/FILE` in \
             fuzz/); log: {}",
            log_path.display()
        );
    }
    let stat = |name: &str| final_stat(&output, name);
    let runs = stat("number_of_executed_units").context("libFuzzer printed no final stats")?;
    Ok(Summary {
        target,
        runs,
        execs_per_sec: stat("average_exec_per_sec").unwrap_or(0),
        peak_rss_mb: stat("peak_rss_mb").unwrap_or(0),
        took,
    })
}

/// A number from libFuzzer's `-print_final_stats` lines (`stat::NAME: VALUE`).
fn final_stat(output: &str, name: &str) -> Option<u64> {
    let prefix = format!("stat::{name}:");
    output
        .lines()
        .filter_map(|line| line.trim().strip_prefix(&prefix))
        .next_back()
        .and_then(|value| value.trim().parse().ok())
}

/// The end of a fuzz log, without libFuzzer's per-input progress lines.
fn print_tail(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !(l.starts_with('#') || l.trim_start().starts_with("NEW_FUNC")))
        .collect();
    for line in &lines[lines.len().saturating_sub(60)..] {
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::final_stat;

    #[test]
    fn final_stats_are_read() {
        let output = "Done 41380 runs in 31 second(s)\nstat::number_of_executed_units: 41380\n\
                      stat::average_exec_per_sec:     1334\nstat::peak_rss_mb:              612\n";
        assert_eq!(final_stat(output, "number_of_executed_units"), Some(41380));
        assert_eq!(final_stat(output, "average_exec_per_sec"), Some(1334));
        assert_eq!(final_stat(output, "peak_rss_mb"), Some(612));
        assert_eq!(final_stat(output, "slowest_unit_time_sec"), None);
    }
}
