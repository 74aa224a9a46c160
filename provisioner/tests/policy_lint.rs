//! The agent's IAM policy, as `apply` writes it in each partition, has no
//! finding from parliament (the IAM linter, pinned in the emulator's venv).

use natron::documents::agent_policy;

#[test]
fn parliament_finds_nothing_in_the_agent_policy() {
    let parliament = natron_lab::emulator::venv_tool("parliament").unwrap();
    for (partition, metrics, addresses) in [
        ("aws", false, 1),
        ("aws", true, 1),
        ("aws", false, 3),
        ("aws-cn", true, 2),
        ("aws-us-gov", true, 2),
    ] {
        let options = natron::documents::AgentOptions {
            cloudwatch_metrics: metrics,
            addresses,
            ..Default::default()
        };
        let policy = agent_policy("prod", partition, &options).to_string();
        let out = std::process::Command::new(&parliament)
            .args(["--string", &policy])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let findings = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && findings.trim().is_empty(),
            "parliament on the {partition} policy (metrics {metrics}, {addresses} addresses): {}\n{findings}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
