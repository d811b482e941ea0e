//! CPU time and peak memory of a process, read from /proc.

/// CPU time and peak memory of one process (or of several, [`Usage::merge`]d).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User plus system CPU seconds so far.
    pub cpu_seconds: f64,
    /// Peak resident set size (VmHWM), in bytes.
    pub peak_rss_bytes: u64,
}

impl Usage {
    /// Two processes together: CPU summed, peak RSS the larger (what one process of the
    /// group needed at most).
    pub fn merge(self, other: Usage) -> Usage {
        Usage {
            cpu_seconds: self.cpu_seconds + other.cpu_seconds,
            peak_rss_bytes: self.peak_rss_bytes.max(other.peak_rss_bytes),
        }
    }

    /// Several processes [`merge`](Self::merge)d; zero for none.
    pub fn merged(all: impl IntoIterator<Item = Usage>) -> Usage {
        all.into_iter().fold(Usage::default(), Usage::merge)
    }
}

/// Reads a process's CPU seconds (user + system) and peak RSS; zeros for what cannot be
/// read (a process that is gone).
pub fn usage(pid: u32) -> Usage {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split(' ').collect()).unwrap_or_default();
    let field = |index: usize| fields.get(index).and_then(|value| value.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu_seconds = (field(11) + field(12)) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_rss_bytes = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .unwrap_or(0);
    Usage { cpu_seconds, peak_rss_bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_merges() {
        let own = usage(std::process::id());
        assert!(own.peak_rss_bytes > 0, "{own:?}");
        assert_eq!(usage(u32::MAX), Usage::default(), "no such process");
        let one = Usage { cpu_seconds: 1.5, peak_rss_bytes: 10 };
        let two = Usage { cpu_seconds: 0.5, peak_rss_bytes: 30 };
        assert_eq!(Usage::merged([one, two]), Usage { cpu_seconds: 2.0, peak_rss_bytes: 30 });
        assert_eq!(Usage::merged([]), Usage::default());
    }
}
