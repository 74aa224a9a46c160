//! systemd's notify protocol: READY=1 once the data plane is up, STATUS=
//! lines, STOPPING=1, and watchdog pings. All are no-ops outside systemd
//! (no NOTIFY_SOCKET).

use std::time::Duration;

use sd_notify::NotifyState;

fn send(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

pub fn ready() {
    send(&[NotifyState::Ready]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// The watchdog timeout systemd expects pings within, when it set one.
/// As libsystemd's sd_watchdog_enabled: WATCHDOG_PID, when present, must be
/// ours (the sd-notify crate also insists that it is present).
pub fn watchdog_timeout() -> Option<Duration> {
    watchdog_from(
        std::env::var("WATCHDOG_USEC").ok(),
        std::env::var("WATCHDOG_PID").ok(),
        std::process::id(),
    )
}

fn watchdog_from(usec: Option<String>, pid: Option<String>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok().filter(|u| *u > 0)?;
    match pid {
        Some(p) if p.parse::<u32>().ok() != Some(me) => None,
        _ => Some(Duration::from_micros(usec)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_settings() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            watchdog_from(s("2000000"), None, 7),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            watchdog_from(s("2000000"), s("7"), 7),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            watchdog_from(s("2000000"), s("8"), 7),
            None,
            "meant for another process"
        );
        assert_eq!(watchdog_from(None, s("7"), 7), None);
        assert_eq!(watchdog_from(s("0"), None, 7), None);
    }
}
