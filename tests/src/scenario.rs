//! The two-AZ failover scenario shared by the failover tests and the bench:
//! both agents ready on their home tables, each seeing the other ready, a
//! 50 ms prober in each private subnet.

use std::time::{Duration, Instant};

use natron_agent::core::config::Config;

use crate::lab::{AgentId, Lab, LabSpec};
use crate::prober::Records;

pub struct TwoAzs {
    pub lab: Lab,
    pub agents: Vec<AgentId>,
    pub probes: Vec<Records>,
}

impl TwoAzs {
    /// With the lab's fast failover timings and `hold_down`.
    pub fn start(hold_down: Duration) -> Result<TwoAzs, String> {
        TwoAzs::start_with(|lab| lab.failover_config(hold_down))
    }

    /// With the agent configuration `config` gives for the lab.
    pub fn start_with(config: impl FnOnce(&Lab) -> Config) -> Result<TwoAzs, String> {
        let lab = Lab::start(LabSpec::with_azs(2)).map_err(|e| e.to_string())?;
        let config = config(&lab);
        let agents = (0..2)
            .map(|az| lab.start_agent(az, &config, &[]))
            .collect::<Result<Vec<AgentId>, _>>()
            .map_err(|e| e.to_string())?;
        let s = TwoAzs {
            lab,
            agents,
            probes: Vec::new(),
        };
        for az in 0..2 {
            s.owner_is(az, az, Duration::from_secs(30))
                .map_err(|e| s.with_log(az, e))?;
        }
        for az in 0..2 {
            s.lab
                .wait_peer_ready(az, Duration::from_secs(15))
                .map_err(|e| s.with_log(az, e))?;
        }
        let probes = (0..2).map(|az| s.lab.start_prober(az)).collect();
        std::thread::sleep(Duration::from_millis(500));
        Ok(TwoAzs { probes, ..s })
    }

    pub fn with_log(&self, az: usize, e: String) -> String {
        format!(
            "{e}\n--- nat-{az} agent log ---\n{}",
            self.lab.agent_log(self.agents[az])
        )
    }

    pub fn eip(&self, az: usize) -> String {
        self.lab.spec.azs[az].eip.to_string()
    }

    /// Waits until AZ `table_az`'s table points at NAT `nat_az`.
    pub fn owner_is(
        &self,
        table_az: usize,
        nat_az: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let table = self.lab.private_tables[table_az].clone();
        let want = self.lab.nats[nat_az].instance_id.clone();
        self.lab.wait_for("table owner", timeout, || {
            (self.lab.table_owner(&table).as_deref() == Some(want.as_str())).then_some(())
        })
    }

    /// Waits until client `az`'s probes are answered through NAT `via`;
    /// returns the time from `t0` to the first such answer.
    pub fn served_via(
        &self,
        az: usize,
        via: usize,
        t0: Instant,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let public = self.eip(via);
        self.lab
            .wait_for("probes answered through the other NAT", timeout, || {
                self.probes[az].first_via_after(t0, &public)
            })
            .map_err(|e| self.with_log(via, e))
    }

    pub fn readyz(&self, az: usize) -> Option<(u16, String)> {
        self.lab.agent_get(az, "/readyz").ok()
    }

    /// Number of default-route changes of AZ `az`'s table since `t0`.
    pub fn changes_since(&self, az: usize, t0: Instant) -> usize {
        self.lab
            .route_changes(&self.lab.private_tables[az])
            .iter()
            .filter(|(t, _)| *t >= t0)
            .count()
    }
}
