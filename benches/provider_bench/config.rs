//! Run size and section selection, from the environment (see main.rs).

use std::time::Duration;

pub struct Config {
    pub quick: bool,
    pub runs: usize,
    pub stress_secs: u64,
    pub samples: usize,
    pub idle_secs: u64,
    pub idle_warmup: Duration,
    pub sections: String,
}

impl Config {
    pub fn from_env() -> Self {
        let quick = std::env::var("DXBENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let num = |name: &str, default: u64| -> u64 {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Config {
            quick,
            runs: num("DXBENCH_RUNS", if quick { 1 } else { 3 }).max(1) as usize,
            stress_secs: num("DXBENCH_STRESS_SECS", if quick { 3 } else { 10 }).max(1),
            samples: num("DXBENCH_SAMPLES", if quick { 20 } else { 100 }).max(1) as usize,
            idle_secs: num("DXBENCH_IDLE_SECS", if quick { 3 } else { 10 }).max(1),
            idle_warmup: Duration::from_secs(if quick { 1 } else { 3 }),
            sections: std::env::var("DXBENCH_SECTIONS").unwrap_or_else(|_| "abcdefghij".to_owned()),
        }
    }

    pub fn wants(&self, section: char) -> bool {
        self.sections.contains(section)
    }
}

/// A progress line on stderr (stdout keeps the tables).
pub fn progress(msg: impl AsRef<str>) {
    eprintln!("[provider_bench] {}", msg.as_ref());
}
