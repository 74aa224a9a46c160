//! What the lab can break: a NAT's death and replacement, its egress at
//! the IGW, the VPC between two NATs.

use std::net::Ipv4Addr;

use crate::faults::{self, Faults};
use crate::router::DELIVERY_TABLE;
use crate::{exec, LabError};

use super::provision::{emu, launch};
use super::Lab;

impl Lab {
    /// NAT `az` dies: its agents are SIGKILLed and its links go down.
    pub fn kill_nat(&self, az: usize) -> Result<(), LabError> {
        let nat = &self.nats[az];
        exec::ip(&nat.ns, &["link", "set", "eth0", "down"])?;
        exec::ip(&self.router_ns, &["link", "set", &nat.router_dev, "down"])?;
        for a in self
            .agents
            .lock()
            .expect("agents")
            .iter_mut()
            .filter(|a| a.az == az)
        {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
        Ok(())
    }

    /// NAT `az`'s links come back (its agent must be started again).
    pub fn revive_nat(&self, az: usize) -> Result<(), LabError> {
        let nat = &self.nats[az];
        let subnet = self.spec.azs[az].public_cidr;
        let gateway = subnet.hosts().next().expect("hosts").to_string();
        exec::ip(&self.router_ns, &["link", "set", &nat.router_dev, "up"])?;
        exec::ip(&nat.ns, &["link", "set", "eth0", "up"])?;
        exec::ip(
            &nat.ns,
            &[
                "route", "replace", "default", "via", &gateway, "dev", "eth0",
            ],
        )?;
        let dest = format!("{}/32", nat.ip);
        let table = DELIVERY_TABLE.to_string();
        exec::ip(
            &self.router_ns,
            &[
                "route",
                "replace",
                &dest,
                "dev",
                &nat.router_dev,
                "table",
                &table,
            ],
        )?;
        Ok(())
    }

    /// Auto Scaling replaces dead NAT `az` (kill it first with
    /// [`Lab::kill_nat`]): the old instance is stopped in the emulator and
    /// keeps whatever Elastic IP it held, as in EC2, and a new instance of
    /// the group is launched in the same public subnet. The new one lives
    /// in the old one's namespace, behind the same router link, at the next
    /// address (the emulator never hands a private IP out twice). Its agent
    /// is not started.
    pub fn replace_nat(&mut self, az: usize) -> Result<(), LabError> {
        let old = self.nats[az].clone();
        let ip = Ipv4Addr::from(u32::from(old.ip) + 1);
        let name = format!("nat-{}", self.spec.azs[az].letter);
        let (group, subnet, old_id) = (
            self.spec.group.clone(),
            old.subnet_id.clone(),
            old.instance_id.clone(),
        );
        let launched = self.ec2(|c| async move {
            c.stop_instances()
                .instance_ids(&old_id)
                .send()
                .await
                .map_err(emu("StopInstances"))?;
            launch(
                &c,
                &subnet,
                ip,
                &[("Name", &name), ("natron:group", &group)],
            )
            .await
        })?;
        let prefix = self.spec.azs[az].public_cidr.prefix_len().to_string();
        exec::ip(&old.ns, &["addr", "flush", "dev", "eth0"])?;
        exec::ip(
            &old.ns,
            &["addr", "add", &format!("{ip}/{prefix}"), "dev", "eth0"],
        )?;
        self.attachments
            .lock()
            .expect("attachments")
            .insert(launched.instance_id.clone(), old.router_dev.clone());
        let nat = &mut self.nats[az];
        nat.instance_id = launched.instance_id;
        nat.interface_id = launched.interface_id;
        nat.ip = ip;
        self.revive_nat(az)
    }

    fn change_faults(&self, f: impl FnOnce(&mut Faults)) -> Result<(), LabError> {
        let mut faults = self.faults.lock().expect("faults");
        f(&mut faults);
        faults::apply(&self.router_ns, &self.igw_ns, &faults)
    }

    /// The IGW drops NAT `az`'s internet traffic (both ways).
    pub fn break_egress(&self, az: usize) -> Result<(), LabError> {
        self.break_egress_of(&[az])
    }

    pub fn restore_egress(&self, az: usize) -> Result<(), LabError> {
        self.restore_egress_of(&[az])
    }

    /// The IGW drops the internet traffic of all of `azs`' NATs at once
    /// (one change: a failure they see together).
    pub fn break_egress_of(&self, azs: &[usize]) -> Result<(), LabError> {
        let pairs: Vec<_> = azs
            .iter()
            .map(|&az| (self.nats[az].ip, self.spec.azs[az].eip))
            .collect();
        self.change_faults(|f| f.egress_blocked.extend(pairs))
    }

    /// Their egress back, at once.
    pub fn restore_egress_of(&self, azs: &[usize]) -> Result<(), LabError> {
        let pairs: Vec<_> = azs
            .iter()
            .map(|&az| (self.nats[az].ip, self.spec.azs[az].eip))
            .collect();
        self.change_faults(|f| {
            for p in &pairs {
                f.egress_blocked.remove(p);
            }
        })
    }

    /// The VPC router drops everything between NATs `a` and `b`.
    pub fn partition(&self, a: usize, b: usize) -> Result<(), LabError> {
        let pair = (self.nats[a].ip, self.nats[b].ip);
        self.change_faults(|f| {
            f.partitions.insert(pair);
        })
    }

    pub fn heal_partitions(&self) -> Result<(), LabError> {
        self.change_faults(|f| {
            f.partitions.clear();
            f.one_way.clear();
        })
    }

    /// New connections from NAT `from` to NAT `to` are dropped; `to` still
    /// reaches `from` (an asymmetric partition).
    pub fn partition_one_way(&self, from: usize, to: usize) -> Result<(), LabError> {
        let pair = (self.nats[from].ip, self.nats[to].ip);
        self.change_faults(|f| {
            f.one_way.insert(pair);
        })
    }

    /// The internet server's HTTP port loses `percent` % of its packets
    /// (None: heals it).
    pub fn flaky_internet(&self, percent: Option<u32>) -> Result<(), LabError> {
        self.change_faults(|f| f.flaky_percent = percent)
    }
}
