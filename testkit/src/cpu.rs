//! CPU time of this process and of a PostgreSQL server on this machine,
//! read from `/proc` (Linux).
//!
//! The server's time is the postmaster's own, that of every process it
//! started and still runs (backends, WAL writer, checkpointer, autovacuum),
//! and that of the ones it reaped (a backend that exited is counted through
//! the postmaster's `cutime`/`cstime`). So a reading covers connections
//! that closed between two readings, and the server must run here.
//!
//! ```no_run
//! # async fn demo(url: &str) {
//! use duroxide_diesel_testkit::cpu;
//!
//! let server = cpu::postmaster_pid(url).await;
//! let before = cpu::Cpu::now(server);
//! // ... run something ...
//! let used = cpu::Cpu::now(server).since(before);
//! println!("client {:.3} s, server {:.3} s", used.client_seconds(), used.server_seconds());
//! # }
//! ```

use crate::db;

/// CPU time used so far, in clock ticks (see [`ticks_per_second`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpu {
    /// This process (user + system).
    pub client: u64,
    /// The server: the postmaster and its children, running and reaped.
    /// 0 without a postmaster.
    pub server: u64,
}

impl Cpu {
    /// This process's time, and the server's when `postmaster` is given.
    pub fn now(postmaster: Option<u32>) -> Cpu {
        let client = proc_times("self").map_or(0, |t| t.0);
        let server = postmaster.map_or(0, |pm| {
            let own = proc_times(&pm.to_string()).map_or(0, |(t, reaped, _)| t + reaped);
            let children: u64 = std::fs::read_dir("/proc")
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter_map(|e| e.file_name().into_string().ok())
                        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                        .filter_map(|n| proc_times(&n))
                        .filter(|(_, _, ppid)| *ppid == pm)
                        .map(|(t, _, _)| t)
                        .sum()
                })
                .unwrap_or(0);
            own + children
        });
        Cpu { client, server }
    }

    /// Ticks used between `earlier` and `self` (0 where a counter went back,
    /// as when a child exited but was not reaped yet).
    pub fn since(self, earlier: Cpu) -> Cpu {
        Cpu {
            client: self.client.saturating_sub(earlier.client),
            server: self.server.saturating_sub(earlier.server),
        }
    }

    /// [`client`](Self::client) in seconds.
    pub fn client_seconds(&self) -> f64 {
        self.client as f64 / ticks_per_second()
    }

    /// [`server`](Self::server) in seconds.
    pub fn server_seconds(&self) -> f64 {
        self.server as f64 / ticks_per_second()
    }
}

/// `(utime + stime, cutime + cstime, ppid)` of a process, in clock ticks.
fn proc_times(pid: &str) -> Option<(u64, u64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after it do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((n(11)? + n(12)?, n(13)? + n(14)?, n(1)? as u32))
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if that fails).
pub fn ticks_per_second() -> f64 {
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The postmaster's pid of the server at `url`, when its data directory
/// is readable here (the server runs on this machine).
pub async fn postmaster_pid(url: &str) -> Option<u32> {
    let dir = db::scalar(url, "current_setting('data_directory')")
        .await
        .ok()??;
    let pid = std::fs::read_to_string(std::path::Path::new(&dir).join("postmaster.pid")).ok()?;
    pid.lines().next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_measured_and_time_only_grows() {
        let before = Cpu::now(None);
        // Burn about 50 ms of CPU (clock ticks are 10 ms).
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let used = Cpu::now(None).since(before);
        assert!(used.client > 0, "50 ms of work read as no CPU");
        assert_eq!(used.server, 0, "no postmaster was given");
        assert_eq!(before.since(Cpu::now(None)).client, 0);
    }
}
