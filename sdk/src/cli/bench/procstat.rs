//! What the kernel knows about the TaskManager processes: CPU time and peak
//! resident memory, from `/proc` (Linux).

use std::path::PathBuf;

/// `/proc` reports CPU times in USER_HZ ticks, which the kernel fixes at 100
/// per second for user space whatever its internal tick rate.
const USER_HZ: f64 = 100.0;

fn proc_file(pid: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

/// User plus system CPU seconds the process has used, if it runs.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(proc_file(pid, "stat")).ok()?;
    // The command name (field 2) may hold spaces: fields count after its ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// The peak resident set size (`VmHWM`) in bytes, if the process runs.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(proc_file(pid, "status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets the process's peak RSS to its current RSS (`clear_refs` 5), so
/// the next run's peak is its own. False if the kernel refused.
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(proc_file(pid, "clear_refs"), "5").is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_time_and_peak_rss() {
        let me = std::process::id();
        // Burn a little CPU so the counter cannot be zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_seconds(me).is_some());
        assert!(peak_rss_bytes(me).unwrap() > 1024 * 1024);
        assert!(reset_peak_rss(me));
    }

    #[test]
    fn gone_process_has_no_figures() {
        // Pid numbers above the kernel's pid_max (at most 2^22) never exist.
        assert_eq!(cpu_seconds(u32::MAX), None);
        assert_eq!(peak_rss_bytes(u32::MAX), None);
    }
}
