//! The oldest nats-server Sluice runs on, and the check every binary makes at connect.

/// Message schedules, per-message TTLs and priority groups need 2.14.
pub const MIN_NATS_SERVER: (u64, u64, u64) = (2, 14, 0);

/// `Ok` when `version` (as the server reports it, e.g. `2.15.1` or `2.14.0-beta.2`) is new
/// enough; otherwise a message saying what was found and what is needed.
pub fn check_server_version(version: &str) -> Result<(), String> {
    let core = version.trim().trim_start_matches('v').split(['-', '+']).next().unwrap_or_default();
    let mut parts = core.split('.').map(|part| part.parse::<u64>().ok());
    let found = (parts.next().flatten(), parts.next().flatten(), parts.next().flatten().or(Some(0)));
    let (major, minor, patch) = MIN_NATS_SERVER;
    match found {
        (Some(a), Some(b), Some(c)) if (a, b, c) >= (major, minor, patch) => Ok(()),
        _ => Err(format!(
            "nats-server {version} is too old: Sluice needs {major}.{minor}.{patch} or newer (JetStream schedules, TTLs, priority groups); run scripts/install-tools.sh for a pinned one"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_new_enough_and_refuses_older() {
        assert!(check_server_version("2.15.1").is_ok());
        assert!(check_server_version("2.14.0").is_ok());
        assert!(check_server_version("3.0.0-beta.1").is_ok());
        let old = check_server_version("2.9.10").unwrap_err();
        assert!(old.contains("2.9.10 is too old") && old.contains("2.14.0"), "{old}");
        assert!(check_server_version("garbage").is_err());
    }
}
