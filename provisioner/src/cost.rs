//! `natron cost`: the monthly price of natron's layout against one NAT
//! gateway per AZ, for the same AZs and traffic. Prices are data
//! (`data/prices.toml`, with the date they were recorded). Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const PRICES_TOML: &str = include_str!("../data/prices.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    pub recorded: String,
    pub region: String,
    pub hours_per_month: f64,
    pub nat_gateway_hour: f64,
    pub nat_gateway_gb: f64,
    pub public_ipv4_hour: f64,
    pub ebs_gp3_gb_month: f64,
    pub cloudwatch_metric_month: f64,
    pub cloudwatch_requests_1000: f64,
    pub cloudwatch_alarm_metric_month: f64,
    pub internet_egress_gb: f64,
    pub instance_hour: BTreeMap<String, f64>,
}

impl Prices {
    pub fn bundled() -> Prices {
        toml::from_str(PRICES_TOML).expect("data/prices.toml is valid (tested)")
    }
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub azs: u32,
    pub instance_type: String,
    pub root_gib: u32,
    pub gb_per_month: f64,
    /// The agents publish the NAT Gateway's metrics to CloudWatch.
    pub cloudwatch_metrics: bool,
    /// Public addresses per NAT (`apply --addresses`), as many per NAT
    /// gateway for the same ports.
    pub addresses: u32,
    /// The group's two CloudWatch alarms (`apply --alarms`).
    pub alarms: bool,
}

/// The metrics each agent publishes (agent/src/core/cloudwatch.rs) and
/// its PutMetricData calls a month (one a minute).
pub const CLOUDWATCH_METRICS: u32 = natron_contract::cloudwatch::METRICS.len() as u32;
const PUTS_PER_MONTH: f64 = 60.0 * 730.0;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    pub item: String,
    pub natron: f64,
    pub nat_gateway: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub recorded: String,
    pub region: String,
    pub lines: Vec<Line>,
    pub natron_total: f64,
    pub nat_gateway_total: f64,
    /// natron's total as a share of the gateways'.
    pub ratio: f64,
}

pub fn estimate(prices: &Prices, layout: &Layout) -> Result<Estimate, String> {
    let hour = prices
        .instance_hour
        .get(&layout.instance_type)
        .ok_or_else(|| {
            format!(
                "instance type {}: no price recorded in data/prices.toml (known: {})",
                layout.instance_type,
                prices
                    .instance_hour
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let azs = f64::from(layout.azs);
    let month = prices.hours_per_month;
    let gb = layout.gb_per_month;
    let mut lines = vec![
        Line {
            item: format!(
                "{} × {} / NAT gateway hours",
                layout.azs, layout.instance_type
            ),
            natron: azs * hour * month,
            nat_gateway: azs * prices.nat_gateway_hour * month,
        },
        Line {
            item: format!("{} public IPv4 addresses", layout.azs),
            natron: azs * prices.public_ipv4_hour * month,
            nat_gateway: azs * prices.public_ipv4_hour * month,
        },
        Line {
            item: format!("root volumes ({} GiB gp3 each)", layout.root_gib),
            natron: azs * f64::from(layout.root_gib) * prices.ebs_gp3_gb_month,
            nat_gateway: 0.0,
        },
        Line {
            item: format!("data processed ({gb} GB)"),
            natron: 0.0,
            nat_gateway: gb * prices.nat_gateway_gb,
        },
        Line {
            item: format!("internet egress ({gb} GB, same for both)"),
            natron: gb * prices.internet_egress_gb,
            nat_gateway: gb * prices.internet_egress_gb,
        },
    ];
    if layout.addresses > 1 {
        let extra = f64::from(layout.addresses - 1);
        lines.push(Line {
            item: format!(
                "{} more public IPv4 addresses for the address pools ({} a NAT, as many a gateway)",
                (layout.addresses - 1) * layout.azs,
                layout.addresses - 1,
            ),
            natron: azs * extra * prices.public_ipv4_hour * month,
            nat_gateway: azs * extra * prices.public_ipv4_hour * month,
        });
    }
    if layout.cloudwatch_metrics {
        let per_nat = f64::from(CLOUDWATCH_METRICS) * prices.cloudwatch_metric_month
            + PUTS_PER_MONTH / 1000.0 * prices.cloudwatch_requests_1000;
        lines.push(Line {
            item: format!(
                "CloudWatch metrics ({CLOUDWATCH_METRICS} a NAT, 1 call a minute; the gateway's are free)"
            ),
            natron: azs * per_nat,
            nat_gateway: 0.0,
        });
    }
    if layout.alarms {
        // Each alarm reads one metric a NAT; alarms on a gateway's own
        // metrics cost the same.
        let alarms = 2.0 * azs * prices.cloudwatch_alarm_metric_month;
        lines.push(Line {
            item: "CloudWatch alarms (2, each reading one metric a NAT)".into(),
            natron: alarms,
            nat_gateway: alarms,
        });
    }
    let natron_total: f64 = lines.iter().map(|l| l.natron).sum();
    let nat_gateway_total: f64 = lines.iter().map(|l| l.nat_gateway).sum();
    Ok(Estimate {
        recorded: prices.recorded.clone(),
        region: prices.region.clone(),
        ratio: natron_total / nat_gateway_total,
        lines,
        natron_total,
        nat_gateway_total,
    })
}

impl std::fmt::Display for Estimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "monthly, USD, {} prices recorded {} (data/prices.toml)",
            self.region, self.recorded
        )?;
        writeln!(f, "{:<48} {:>12} {:>12}", "", "natron", "NAT gateway")?;
        for l in &self.lines {
            writeln!(
                f,
                "{:<48} {:>12.2} {:>12.2}",
                l.item, l.natron, l.nat_gateway
            )?;
        }
        writeln!(
            f,
            "{:<48} {:>12.2} {:>12.2}",
            "total", self.natron_total, self.nat_gateway_total
        )?;
        writeln!(
            f,
            "natron costs {:.0}% of NAT gateways; saves {:.2} a month",
            self.ratio * 100.0,
            self.nat_gateway_total - self.natron_total
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two t4g.nano with 4 GiB roots and 100 GB a month.
    fn two_nanos(cloudwatch_metrics: bool) -> Estimate {
        let layout = Layout {
            azs: 2,
            instance_type: "t4g.nano".into(),
            root_gib: 4,
            gb_per_month: 100.0,
            cloudwatch_metrics,
            addresses: 1,
            alarms: false,
        };
        estimate(&Prices::bundled(), &layout).unwrap()
    }

    #[test]
    fn two_nanos_against_two_gateways() {
        let e = two_nanos(false);
        // 2 × 0.0042 × 730 + 2 × 0.005 × 730 + 2 × 4 × 0.08 + 100 × 0.09
        assert!((e.natron_total - (6.132 + 7.3 + 0.64 + 9.0)).abs() < 1e-9);
        // 2 × 0.045 × 730 + 2 × 0.005 × 730 + 100 × 0.045 + 100 × 0.09
        assert!((e.nat_gateway_total - (65.7 + 7.3 + 4.5 + 9.0)).abs() < 1e-9);
        assert!(e.ratio < 0.3);
        let with_metrics = two_nanos(true);
        // 2 × (9 × 0.30 + 43.8 × 0.01)
        let metrics = with_metrics.natron_total - e.natron_total;
        assert!((metrics - 2.0 * (5.7 + 0.438)).abs() < 1e-9, "{metrics}");
        assert_eq!(with_metrics.nat_gateway_total, e.nat_gateway_total);
    }

    #[test]
    fn a_pool_and_alarms_add_their_price_to_both_sides() {
        let one = two_nanos(false);
        let layout = Layout {
            azs: 2,
            instance_type: "t4g.nano".into(),
            root_gib: 4,
            gb_per_month: 100.0,
            cloudwatch_metrics: false,
            addresses: 3,
            alarms: true,
        };
        let three = estimate(&Prices::bundled(), &layout).unwrap();
        // 2 NATs × 2 more addresses × 0.005 × 730, and 2 alarms × 2 NATs
        // × 0.10, on both sides.
        let extra = 2.0 * 2.0 * 0.005 * 730.0 + 0.4;
        assert!((three.natron_total - one.natron_total - extra).abs() < 1e-9);
        assert!((three.nat_gateway_total - one.nat_gateway_total - extra).abs() < 1e-9);
        let line = three
            .lines
            .iter()
            .find(|l| l.item.contains("address pools"))
            .unwrap();
        assert!(line.item.starts_with("4 more public IPv4"), "{}", line.item);
    }

    #[test]
    fn unknown_instance_type_is_named() {
        let err = estimate(
            &Prices::bundled(),
            &Layout {
                azs: 2,
                instance_type: "m9.huge".into(),
                root_gib: 4,
                gb_per_month: 1.0,
                cloudwatch_metrics: false,
                addresses: 1,
                alarms: false,
            },
        )
        .unwrap_err();
        assert!(err.contains("m9.huge") && err.contains("t4g.nano"));
    }
}
