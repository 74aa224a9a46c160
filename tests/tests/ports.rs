//! Source ports, a NAT's scarce resource (issue 15): one client address
//! calling one destination, as Lambda functions behind a few Hyperplane
//! ENIs call one API, holds as many connections as the NAT has ports, and
//! the agent counts the connections refused beyond them and names the
//! destination.

use std::time::Duration;

use natron_contract::readyz::Area;
use natron_lab::emulator;
use natron_lab::internet::SERVER;
use natron_lab::lab::{Lab, LabSpec};

/// A port of the internet server's namespace nothing else listens on.
const HOLD_PORT: u16 = 9004;

/// With 1,000 ports, 1,300 connections tried from one client address to
/// one destination hold 1,000; the refused ones are counted
/// (`natron_nat_port_allocation_errors_total`, /status), the destination
/// is named in a warning, no full table is claimed, and the warning goes
/// once the connections close.
#[test]
fn a_destination_holds_as_many_connections_as_ports_and_the_rest_are_counted() {
    let lab = Lab::start(LabSpec::with_azs(1)).expect("lab starts");
    let mut config = lab.agent_config();
    config.nat.port_range = "40000-40999".into();
    let agent = lab.start_agent(0, config, &[]).unwrap();
    lab.wait_egress(0, agent);
    let metrics = lab.agent_metrics(0).unwrap();
    assert_eq!(metrics["natron_nat_source_port_capacity"], 1000.0);
    let errors_before = metrics["natron_nat_port_allocation_errors_total"];

    let helper = std::path::Path::new(env!("CARGO_BIN_EXE_natron-lab"));
    let held = lab.hold_from_client(helper, 0, HOLD_PORT, 1_300).unwrap();
    // A connection attempt may time out on the loaded machine although a
    // port was free: a few short of 1,000 is the client, not the NAT.
    assert!(
        (950..=1_000).contains(&held.established),
        "1,000 ports: {} connections held",
        held.established
    );
    let refused = (1_300 - held.established) as f64;

    let destination = format!("{SERVER}:{HOLD_PORT}/tcp");
    let status = lab
        .wait_for(
            "the refused connections counted and the destination named",
            Duration::from_secs(30),
            || {
                let s = lab.agent_status(0).ok()?;
                let ports = s.dataplane.source_ports.clone()?;
                let named = ports.busiest.first()?.to_string() == destination;
                (named && ports.allocation_errors as f64 >= refused).then_some(s)
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", lab.agent_log(agent)));
    let ports = status.dataplane.source_ports.clone().unwrap();
    eprintln!(
        "1,000 ports: {} held, {refused} refused; {} packets refused; busiest {:?}",
        held.established, ports.allocation_errors, ports.busiest
    );
    assert!(
        ports.busiest[0].connections >= held.established as u64,
        "{ports:?}"
    );
    let warning = status
        .warnings
        .iter()
        .find(|w| w.area == Area::SourcePorts)
        .unwrap_or_else(|| panic!("no source-port warning: {:?}", status.warnings));
    assert!(
        warning.message.contains(&destination),
        "{}",
        warning.message
    );
    // Each refused connection lost at least its first SYN.
    let errors = lab.agent_metrics(0).unwrap()["natron_nat_port_allocation_errors_total"];
    assert!(
        errors - errors_before >= refused,
        "natron_nat_port_allocation_errors_total grew {} for {refused} refused connections",
        errors - errors_before
    );
    let log = lab.agent_log(agent);
    assert!(
        log.contains("no free source port") && log.contains(&destination),
        "the journal names the destination:\n{log}"
    );
    assert!(
        !log.contains("conntrack table full"),
        "exhausted ports are not a full table:\n{log}"
    );
    // `natron status`, which reads EC2 only, shows it from the NAT's tag.
    let (vpc, group) = (lab.vpc_id.clone(), lab.spec.group.clone());
    let shown = lab.ec2(|_| async move {
        let endpoint = format!("http://127.0.0.1:{}", emulator::PORT);
        let cloud = natron::cloud::Aws::new(&emulator::sdk_config(&endpoint).await);
        let inv = natron::cloud::Cloud::inventory(&cloud, &vpc, &group)
            .await
            .expect("inventory");
        natron::status::status(&inv, &group).to_string()
    });
    assert!(
        shown.contains("SOURCE PORTS") && shown.contains(&destination),
        "natron status:\n{shown}"
    );

    drop(held);
    lab.wait_for(
        "the warning goes once the connections close",
        Duration::from_secs(30),
        || {
            let s = lab.agent_status(0).ok()?;
            s.warnings
                .iter()
                .all(|w| w.area != Area::SourcePorts)
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n--- agent log ---\n{}", lab.agent_log(agent)));
}
