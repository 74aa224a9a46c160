use super::*;

fn parse(text: &str) -> Result<Settings, ConfigError> {
    Config::parse("agent.toml", text)
}

fn problems(text: &str) -> Vec<(String, usize)> {
    match parse(text) {
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.into_iter().map(|p| (p.key, p.line)).collect()
        }
        other => panic!("{text:?}: expected Invalid, got {other:?}"),
    }
}

#[test]
fn semantic_errors_name_key_and_line() {
    let cases = [
        ("[health]\ninterval = \"1s\"\nrise = 0\n", "health.rise", 3),
        ("[health]\nfall = 0\n", "health.fall", 2),
        ("[health]\ntargets = [\"ftp://x\"]\n", "health.targets", 2),
        (
            "[health]\ntargets = [\"tcp://a:1\"]\nmin_passing = 2\n",
            "health.min_passing",
            3,
        ),
        ("[nat]\nport_range = \"5000-100\"\n", "nat.port_range", 2),
        (
            "[metrics.cloudwatch]\nnamespace = \"AWS/NATGateway\"\n",
            "metrics.cloudwatch.namespace",
            2,
        ),
        (
            "[metrics.cloudwatch]\ninterval = \"500ms\"\n",
            "metrics.cloudwatch.interval",
            2,
        ),
        ("[nat]\nport_range = \"0-100\"\n", "nat.port_range", 2),
        ("[nat]\naddresses = 0\n", "nat.addresses", 2),
        ("[nat]\n\naddresses = 51\n", "nat.addresses", 3),
        (
            "[nat]\negress_interface = \"a/b\"\n",
            "nat.egress_interface",
            2,
        ),
        ("[nat]\nsource_cidrs = []\n", "nat.source_cidrs", 2),
        (
            "[conntrack]\nmemory_percent = 90\n",
            "conntrack.memory_percent",
            2,
        ),
        ("[conntrack]\nmax = 10\n", "conntrack.max", 2),
        ("group = \"\"\n", "group", 1),
        ("[ec2]\nmax_attempts = 0\n", "ec2.max_attempts", 2),
        ("[ec2]\nendpoint_url = \"ftp://x\"\n", "ec2.endpoint_url", 2),
        (
            "[failover]\nheartbeat_interval = \"1s\"\nheartbeat_timeout = \"1500ms\"\n",
            "failover.heartbeat_timeout",
            3,
        ),
        ("[failover]\npeer_fall = 0\n", "failover.peer_fall", 2),
    ];
    for (text, key, line) in cases {
        assert_eq!(problems(text), vec![(key.to_string(), line)], "{text:?}");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = "[health]\nrise = 0\nfall = 0\n[nat]\nport_range = \"x\"\n";
    assert_eq!(
        problems(text),
        vec![
            ("health.rise".to_string(), 2),
            ("health.fall".to_string(), 3),
            ("nat.port_range".to_string(), 5)
        ]
    );
    let message = parse(text).unwrap_err().to_string();
    assert_eq!(message.lines().count(), 3, "{message}");
    assert!(
        message.starts_with("agent.toml:2: key `health.rise`"),
        "{message}"
    );
}

#[test]
fn port_range_parses() {
    assert_eq!(parse_port_range("1024-65535"), Ok((1024, 65535)));
    assert!(parse_port_range("1024").is_err());
    assert!(parse_port_range("a-b").is_err());
}

#[test]
fn cloudwatch_is_off_by_default_and_validated_once() {
    assert_eq!(Settings::default().cloudwatch, None);
    let s = parse("[metrics.cloudwatch]\nenabled = true\ninterval = \"10s\"\n").unwrap();
    assert_eq!(
        s.cloudwatch,
        Some(CloudWatch {
            namespace: "natron".into(),
            interval: Duration::from_secs(10),
        })
    );
}

#[test]
fn nat64_ports_are_taken_out_of_masquerade() {
    let s = parse("[nat64]\nenabled = true\n").unwrap();
    assert_eq!(
        s.nat.port_range,
        (1024, 61000),
        "Jool's default range off the top"
    );
    let n = s.nat64.expect("on");
    assert_eq!(n.port_range, (61001, 65535));
    assert_eq!(n.source_cidrs, None, "the VPC's IPv6 blocks");
    let off = parse("[nat64]\nport_range = \"2000-3000\"\n").unwrap();
    assert_eq!(off.nat.port_range, (1024, 65535), "nothing taken while off");
    assert_eq!(off.nat64, None);
    assert_eq!(carve((1024, 65535), (1024, 5000)), Ok((5001, 65535)));
    assert_eq!(carve((1024, 30000), (40000, 50000)), Ok((1024, 30000)));
    assert_eq!(carve((10000, 20000), (5000, 15000)), Ok((15001, 20000)));
    assert!(carve((1024, 65535), (1024, 65535)).is_err(), "nothing left");
    assert_eq!(
        problems("[nat64]\nenabled = true\nport_range = \"30000-31000\"\n"),
        vec![("nat64.port_range".to_string(), 3)],
        "a hole in the middle would split masquerade's range"
    );
    assert_eq!(
        problems("[nat64]\nsource_cidrs = []\n"),
        vec![("nat64.source_cidrs".to_string(), 2)]
    );
}
