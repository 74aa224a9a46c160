//! The systemd unit the image installs: notify type, watchdog, validation
//! before start, and hardening that still lets the agent do its job.

const UNIT: &str = include_str!("../natron-agent.service");

fn values(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .collect()
}

#[test]
fn notify_type_with_watchdog() {
    assert_eq!(values("Type"), vec!["notify"]);
    let watchdog: Vec<u64> = values("WatchdogSec")
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    assert_eq!(watchdog.len(), 1);
    assert!(
        watchdog[0] >= 10,
        "the control loop ticks every few seconds"
    );
    assert_eq!(values("Restart"), vec!["always"]);
}

#[test]
fn config_is_validated_before_start() {
    let pre = values("ExecStartPre");
    assert!(
        pre.iter()
            .any(|c| c.contains("--validate") && c.contains("/etc/natron/agent.toml")),
        "{pre:?}"
    );
    assert!(values("ExecStart")[0].contains("--config /etc/natron/agent.toml"));
}

#[test]
fn hardened_but_able_to_program_the_network() {
    let caps = values("CapabilityBoundingSet").join(" ");
    assert!(caps.contains("CAP_NET_ADMIN"));
    assert!(!caps.contains("CAP_SYS_ADMIN"));
    for key in [
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "ProtectKernelModules",
        "RestrictNamespaces",
    ] {
        assert_eq!(values(key), vec!["yes"], "{key}");
    }
    assert_eq!(values("ProtectSystem"), vec!["strict"]);
    // sysctls under /proc/sys/net must stay writable.
    assert!(values("ProtectKernelTunables").is_empty());
    assert!(values("ReadWritePaths")
        .iter()
        .any(|p| p.contains("/proc/sys/net")));
    assert!(values("RestrictAddressFamilies")[0].contains("AF_NETLINK"));
}

#[test]
fn restarts_keep_the_runtime_directory_and_sockets_are_plenty() {
    assert_eq!(values("RuntimeDirectory"), vec!["natron"]);
    assert_eq!(values("RuntimeDirectoryPreserve"), vec!["yes"]);
    let files: u64 = values("LimitNOFILE")[0].parse().unwrap();
    assert!(files >= 4096);
}

const HANDOFF: &str = include_str!("../natron-handoff.service");

fn handoff_values(key: &str) -> Vec<&'static str> {
    HANDOFF
        .lines()
        .filter_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .collect()
}

#[test]
fn the_handoff_runs_at_shutdown_while_the_agent_still_runs() {
    // Ordered after the agent: stopped before it at shutdown.
    assert!(handoff_values("After")[0].contains("natron-agent.service"));
    assert_eq!(handoff_values("Type"), vec!["oneshot"]);
    assert_eq!(handoff_values("RemainAfterExit"), vec!["yes"]);
    assert!(handoff_values("ExecStop")[0].ends_with("handoff"));
    // Not bound to the agent: restarting the agent does not stop it.
    for key in ["BindsTo", "PartOf", "Requires"] {
        assert!(handoff_values(key).is_empty(), "{key}");
    }
}
