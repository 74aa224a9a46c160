//! NAT64 failover between two NATs that are natron's image (only the
//! image's kernel has Jool), shared by the VM test and the bench: each
//! AZ's private subnet holds an IPv4 client and an IPv6-only client, its
//! table serves NAT64, and two 50 ms probers run side by side, one from
//! each client (the IPv6-only one's to the internet server's `64:ff9b::`
//! address), so that one failure is seen by both at once.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use natron_agent::core::config::Config;

use crate::lab::{nat64_address, Lab, LabSpec, Until};
use crate::prober::Records;

/// Power-on to ready, under TCG with two guests on two cores.
const BOOT_BOUND: Duration = Duration::from_secs(240);

/// One failure as the dead NAT's AZ felt it: from the power-off to the
/// first answer through the peer, per address family.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    pub ipv4: Duration,
    pub ipv6: Duration,
}

/// The failover timings of the VM tests and bench: the production
/// defaults except a peer timeout a guest under TCG can answer within,
/// a 2 s proof window and a 10 s hold-down.
pub fn tcg_timings(c: &mut Config) {
    c.failover.hold_down = Duration::from_secs(10);
    c.failover.peer_timeout = Duration::from_secs(1);
    c.failover.proof_window = Duration::from_secs(2);
}

pub struct TwoVmNats {
    pub lab: Lab,
    pub config: Config,
    /// Per AZ: the IPv4 client's prober and the IPv6-only client's
    /// (over NAT64).
    pub probes4: Vec<Records>,
    pub probes6: Vec<Records>,
}

impl TwoVmNats {
    /// Two AZs whose NATs are `image` with NAT64 on (the lab's VM
    /// configuration changed by `tune`), booted side by side; returns once
    /// each owns its table's default and NAT64 routes, sees its peer ready,
    /// and both probers of each AZ run.
    pub fn start(image: &Path, tune: impl FnOnce(&mut Config)) -> Result<TwoVmNats, String> {
        let spec = LabSpec::with_azs(2)
            .with_vm_nat(0, image.to_path_buf())
            .with_vm_nat(1, image.to_path_buf())
            .with_ipv6_clients();
        let lab = Lab::start(spec).map_err(|e| e.to_string())?;
        let mut config = lab.vm_nat_config();
        config.nat64.enabled = true;
        tune(&mut config);
        for az in 0..2 {
            lab.nat64_client(az).map_err(|e| e.to_string())?;
        }
        std::thread::scope(|s| {
            let boots: Vec<_> = (0..2)
                .map(|az| {
                    let (lab, config) = (&lab, &config);
                    s.spawn(move || lab.boot_vm_nat(az, config, Until::Ready, BOOT_BOUND))
                })
                .collect();
            boots
                .into_iter()
                .map(|b| b.join().expect("boot thread"))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| e.to_string())?;
        let s = TwoVmNats {
            lab,
            config,
            probes4: Vec::new(),
            probes6: Vec::new(),
        };
        for az in 0..2 {
            s.both_routes_on(az, az, Duration::from_secs(60))?;
            s.lab
                .wait_peer_ready(az, Duration::from_secs(30))
                .map_err(|e| s.with_console(az, e))?;
        }
        let server6 = IpAddr::V6(nat64_address(crate::internet::SERVER));
        let probes4 = (0..2).map(|az| s.lab.start_prober(az)).collect();
        let probes6 = (0..2)
            .map(|az| s.lab.start_prober_in(&s.lab.clients6[az].ns, server6))
            .collect();
        let s = TwoVmNats {
            probes4,
            probes6,
            ..s
        };
        for az in 0..2 {
            s.served_via(az, az, Instant::now(), Duration::from_secs(60))?;
        }
        Ok(s)
    }

    /// Waits until AZ `table_az`'s table sends both `0.0.0.0/0` and
    /// `64:ff9b::/96` to NAT `nat_az` (the default route as the lab's
    /// router has it, the NAT64 route as the emulator does).
    pub fn both_routes_on(
        &self,
        table_az: usize,
        nat_az: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let table = self.lab.private_tables[table_az].clone();
        let nat = &self.lab.nats[nat_az];
        self.lab
            .wait_for("both routes on the NAT", timeout, || {
                let default = self.lab.table_owner(&table)?;
                let nat64 = self.lab.nat64_target(&table).ok()??;
                (default == nat.instance_id && nat64 == nat.interface_id).then_some(())
            })
            .map_err(|e| {
                let nat64 = self.lab.nat64_target(&table);
                let e = format!(
                    "{table} to {}: {e} (0.0.0.0/0 on {:?}, {} on {nat64:?})",
                    nat.instance_id,
                    self.lab.table_owner(&table),
                    natron_agent::model::NAT64_ROUTE
                );
                self.with_console(nat_az, e)
            })
    }

    /// Waits until client `az`'s probers, both of them, are answered
    /// through NAT `via` by requests sent from `t0`; returns the time from
    /// `t0` to each family's first such answer.
    pub fn served_via(
        &self,
        az: usize,
        via: usize,
        t0: Instant,
        timeout: Duration,
    ) -> Result<Outage, String> {
        let public = self.lab.spec.azs[via].eip.to_string();
        self.lab
            .wait_for(
                "IPv4 and NAT64 probes answered through the NAT",
                timeout,
                || {
                    Some(Outage {
                        ipv4: self.probes4[az].first_via_after(t0, &public)?,
                        ipv6: self.probes6[az].first_via_after(t0, &public)?,
                    })
                },
            )
            .map_err(|e| {
                let (v4, v6) = (
                    self.probes4[az].first_via_after(t0, &public),
                    self.probes6[az].first_via_after(t0, &public),
                );
                self.with_console(
                    via,
                    format!("client {az} through {public}: {e} (IPv4: {v4:?}, NAT64: {v6:?})"),
                )
            })
    }

    /// Pulls AZ `az`'s NAT's plug; returns the outage its client saw until
    /// both families were answered through the peer, after checking that
    /// both routes of its table moved there.
    pub fn strike(&self, az: usize) -> Result<Outage, String> {
        let peer = 1 - az;
        let t0 = Instant::now();
        self.lab.power_off_vm_nat(az).map_err(|e| e.to_string())?;
        let outage = self.served_via(az, peer, t0, Duration::from_secs(60))?;
        self.both_routes_on(az, peer, Duration::from_secs(10))?;
        Ok(outage)
    }

    /// Powers AZ `az`'s NAT on again and waits until it has both routes of
    /// its table back (after the hold-down) and its client is answered
    /// through it on both families.
    pub fn restore(&self, az: usize) -> Result<(), String> {
        self.lab
            .boot_vm_nat(az, &self.config, Until::Ready, BOOT_BOUND)
            .map_err(|e| e.to_string())?;
        let back = self.config.failover.hold_down * 3 + Duration::from_secs(30);
        self.both_routes_on(az, az, back)?;
        self.served_via(az, az, Instant::now(), Duration::from_secs(30))?;
        Ok(())
    }

    /// `e` with the end of AZ `az`'s console.
    pub fn with_console(&self, az: usize, e: String) -> String {
        let console = self.lab.vm_nat_console(az);
        let lines: Vec<&str> = console.lines().collect();
        format!(
            "{e}\n--- nat-{az} console (end) ---\n{}",
            lines[lines.len().saturating_sub(60)..].join("\n")
        )
    }
}
