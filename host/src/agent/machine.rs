//! What the runner tells the host about the machine it runs on: its platform and size when it
//! registers, and what it is using at each heartbeat. Read from the standard library and, on
//! Linux, `/proc`; what cannot be read here is left out rather than guessed.

use serde_json::{Map, Value, json};

/// `os`, `architecture` and `resource_info` for the registration.
pub fn profile() -> Map<String, Value> {
    let mut resource_info = Map::new();
    if let Ok(cores) = std::thread::available_parallelism() {
        resource_info.insert("cpu_cores".into(), json!(cores.get()));
    }
    if let Some(memory) = meminfo() {
        resource_info.insert("memory_mb".into(), json!(memory.total_kb / 1024));
    }
    let mut profile = Map::new();
    profile.insert("os".into(), json!(std::env::consts::OS));
    profile.insert("architecture".into(), json!(std::env::consts::ARCH));
    profile.insert("resource_info".into(), Value::Object(resource_info));
    profile
}

/// `resource_usage` for a heartbeat: load average and memory in use; `None` when nothing can
/// be read on this system.
pub fn usage() -> Option<Map<String, Value>> {
    let mut usage = Map::new();
    if let Some(load) = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<f64>().ok())
    {
        usage.insert("load_1m".into(), json!(load));
    }
    if let Some(memory) = meminfo().filter(|m| m.total_kb > 0) {
        let used_kb = memory.total_kb.saturating_sub(memory.available_kb);
        usage.insert("memory_used_mb".into(), json!(used_kb / 1024));
        let percent = used_kb as f64 * 100.0 / memory.total_kb as f64;
        usage.insert(
            "memory_percent".into(),
            json!((percent * 10.0).round() / 10.0),
        );
    }
    (!usage.is_empty()).then_some(usage)
}

struct Meminfo {
    total_kb: u64,
    available_kb: u64,
}

fn meminfo() -> Option<Meminfo> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines().find_map(|line| {
            line.strip_prefix(name)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
    };
    Some(Meminfo {
        total_kb: field("MemTotal:")?,
        available_kb: field("MemAvailable:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_names_this_platform_and_usage_stays_within_bounds() {
        let profile = profile();
        assert_eq!(profile["os"], std::env::consts::OS);
        assert_eq!(profile["architecture"], std::env::consts::ARCH);
        if cfg!(target_os = "linux") {
            assert!(profile["resource_info"]["memory_mb"].as_u64().unwrap_or(0) > 0);
            let usage = usage().expect("linux has /proc");
            let percent = usage["memory_percent"].as_f64().expect("a number");
            assert!((0.0..=100.0).contains(&percent), "{percent}");
        }
    }
}
