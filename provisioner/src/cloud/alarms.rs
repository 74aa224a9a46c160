//! The group's CloudWatch alarms (`--alarms`): read back by name prefix,
//! put whole, deleted.

use aws_sdk_cloudwatch::types as cwt;
use natron_contract::aws::AwsError;

use super::{fail, Aws};
use crate::alarms::{name_prefix, AlarmSpec, Comparison, Missing};
use crate::model::GROUP_TAG;

const CLOUDWATCH: &str = "CloudWatch";
/// The query's id in the alarm (one query, the one the alarm reads).
const QUERY_ID: &str = "q";

/// An alarm as CloudWatch has it, in natron's terms; one natron did not
/// write comes back with what it has, so that the plan replaces it.
fn parse(a: &cwt::MetricAlarm) -> AlarmSpec {
    let query = a
        .metrics()
        .iter()
        .find_map(|m| m.expression())
        .unwrap_or_default()
        .to_string();
    AlarmSpec {
        name: a.alarm_name().unwrap_or_default().to_string(),
        description: a.alarm_description().unwrap_or_default().to_string(),
        query,
        comparison: match a.comparison_operator() {
            Some(cwt::ComparisonOperator::LessThanThreshold) => Comparison::LessThanThreshold,
            _ => Comparison::GreaterThanThreshold,
        },
        threshold: a.threshold().map_or(0, |t| t.max(0.0) as u32),
        evaluation_periods: a.evaluation_periods().map_or(0, |p| p.max(0) as u32),
        period: a
            .metrics()
            .iter()
            .find_map(|m| m.period())
            .map_or(0, |p| p.max(0) as u32),
        missing: match a.treat_missing_data() {
            Some("breaching") => Missing::Breaching,
            _ => Missing::NotBreaching,
        },
    }
}

impl Aws {
    pub(super) async fn alarms(&self, group: &str) -> Result<Vec<AlarmSpec>, AwsError> {
        let prefix = name_prefix(group);
        let mut alarms = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let out = self
                .cloudwatch
                .describe_alarms()
                .alarm_name_prefix(&prefix)
                .set_next_token(next.take())
                .send()
                .await
                .map_err(fail(CLOUDWATCH, "DescribeAlarms", &prefix))?;
            alarms.extend(out.metric_alarms().iter().map(parse));
            match out.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        alarms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(alarms)
    }

    pub(super) async fn put_alarm(&self, a: &AlarmSpec, group: &str) -> Result<(), AwsError> {
        let comparison = match a.comparison {
            Comparison::GreaterThanThreshold => cwt::ComparisonOperator::GreaterThanThreshold,
            Comparison::LessThanThreshold => cwt::ComparisonOperator::LessThanThreshold,
        };
        self.cloudwatch
            .put_metric_alarm()
            .alarm_name(&a.name)
            .alarm_description(&a.description)
            .comparison_operator(comparison)
            .threshold(f64::from(a.threshold))
            .evaluation_periods(a.evaluation_periods as i32)
            .treat_missing_data(a.missing.as_str())
            .metrics(
                cwt::MetricDataQuery::builder()
                    .id(QUERY_ID)
                    .expression(&a.query)
                    .period(a.period as i32)
                    .return_data(true)
                    .build(),
            )
            .tags(cwt::Tag::builder().key(GROUP_TAG).value(group).build())
            .send()
            .await
            .map_err(fail(CLOUDWATCH, "PutMetricAlarm", &a.name))?;
        Ok(())
    }

    pub(super) async fn delete_alarm(&self, name: &str) -> Result<(), AwsError> {
        self.cloudwatch
            .delete_alarms()
            .alarm_names(name)
            .send()
            .await
            .map_err(fail(CLOUDWATCH, "DeleteAlarms", name))?;
        Ok(())
    }
}
