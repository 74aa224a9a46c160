//! The CloudWatch alarms of `natron apply --alarms`, as data. Pure.
//!
//! Each alarm reads the whole group through a Metrics Insights query, so
//! it outlives the NATs it watches: a replaced NAT publishes under a new
//! `NatInstanceId` and the same alarm sees it (an alarm per instance would
//! go blind at the first replacement).

use serde::Serialize;

use natron_contract::cloudwatch::{
    DIMENSION_GROUP, DIMENSION_INSTANCE, ERROR_PORT_ALLOCATION, NAMESPACE, READY,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Comparison {
    GreaterThanThreshold,
    LessThanThreshold,
}

impl Comparison {
    pub fn as_str(self) -> &'static str {
        match self {
            Comparison::GreaterThanThreshold => "GreaterThanThreshold",
            Comparison::LessThanThreshold => "LessThanThreshold",
        }
    }
}

/// How a period without data counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Missing {
    Breaching,
    NotBreaching,
}

impl Missing {
    pub fn as_str(self) -> &'static str {
        match self {
            Missing::Breaching => "breaching",
            Missing::NotBreaching => "notBreaching",
        }
    }
}

/// One alarm as natron writes it and reads it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlarmSpec {
    pub name: String,
    pub description: String,
    /// A Metrics Insights query over the group's metrics.
    pub query: String,
    pub comparison: Comparison,
    pub threshold: u32,
    pub evaluation_periods: u32,
    /// Seconds.
    pub period: u32,
    pub missing: Missing,
}

/// Every alarm of a group starts with this.
pub fn name_prefix(group: &str) -> String {
    format!("natron-{group}-")
}

fn query(metric: &str, group: &str) -> String {
    format!(
        "SELECT SUM({metric}) FROM SCHEMA(\"{NAMESPACE}\", {DIMENSION_GROUP}, {DIMENSION_INSTANCE}) WHERE {DIMENSION_GROUP} = '{group}'"
    )
}

/// The alarms of a group of `nats` NATs (one per AZ).
pub fn wanted(group: &str, nats: u32) -> Vec<AlarmSpec> {
    vec![
        AlarmSpec {
            name: format!("{}port-allocation", name_prefix(group)),
            description: format!(
                "natron group {group}: new connections found no free source port towards their destination (ErrorPortAllocation > 0); `natron status` names the destination"
            ),
            query: query(ERROR_PORT_ALLOCATION, group),
            comparison: Comparison::GreaterThanThreshold,
            threshold: 0,
            evaluation_periods: 1,
            period: 60,
            missing: Missing::NotBreaching,
        },
        AlarmSpec {
            name: format!("{}not-ready", name_prefix(group)),
            description: format!(
                "natron group {group}: fewer than {nats} NATs ready for 2 minutes (a NAT not ready, or not publishing: dead, replaced, or without credentials); `natron status` and `natron check` say which"
            ),
            query: query(READY, group),
            comparison: Comparison::LessThanThreshold,
            threshold: nats,
            evaluation_periods: 2,
            period: 60,
            // No NAT publishing at all is the worst case, not "no data".
            missing: Missing::Breaching,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarms_read_the_whole_group_by_the_agents_names() {
        let alarms = wanted("prod", 2);
        assert_eq!(alarms.len(), 2);
        for a in &alarms {
            assert!(a.name.starts_with("natron-prod-"), "{}", a.name);
            assert!(a.query.contains("WHERE Group = 'prod'"), "{}", a.query);
            assert!(
                a.query.contains("SCHEMA(\"natron\", Group, NatInstanceId)"),
                "{}",
                a.query
            );
        }
        assert!(alarms[0].query.contains("SUM(ErrorPortAllocation)"));
        assert_eq!(
            (alarms[1].comparison, alarms[1].threshold),
            (Comparison::LessThanThreshold, 2)
        );
        assert_eq!(alarms[1].missing, Missing::Breaching);
    }
}
