//! Sizes, rates and durations for people, as the seed shows them (binary units with the
//! labels KB, MB, GB, TB: 1 MB = 1,048,576 bytes).

use std::time::Duration;

const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];

pub fn readable_size(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// MB (binary) per second; 0 when no time has passed.
pub fn mbps(bytes: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        0.0
    } else {
        bytes as f64 / (1024.0 * 1024.0) / seconds
    }
}

pub fn readable_rate(bytes: u64, elapsed: Duration) -> String {
    format!("{:.1} MB/s", mbps(bytes, elapsed))
}

pub fn readable_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else {
        let whole = duration.as_secs();
        format!("{}m {:02}s", whole / 60, whole % 60)
    }
}
