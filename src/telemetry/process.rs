//! Process basics (`process_*`, the names Prometheus client libraries use), sampled at each
//! scrape.

use super::names;

/// Resident memory, CPU time and open file descriptors, from /proc (Linux only; elsewhere the
/// gauges are simply not set).
pub fn sample() {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
        if let Some(kib) = rss_kib {
            metrics::gauge!(names::PROCESS_RESIDENT_MEMORY).set(kib * 1024.0);
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may contain spaces, hence the last ')').
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state.
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        if let (Some(user), Some(system)) = (ticks(11), ticks(12)) {
            // USER_HZ is 100 on every Linux architecture we run on. The metrics facade's
            // counters are integers: whole seconds, plenty for rate() over minutes.
            metrics::counter!(names::PROCESS_CPU_SECONDS)
                .absolute(((user + system) / 100.0) as u64);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!(names::PROCESS_OPEN_FDS).set(fds.count() as f64);
    }
}
