//! The group's alarms (`--alarms`) as `AWS::CloudWatch::Alarm` resources,
//! each with its one Metrics Insights query, as `apply` puts them.

use serde_json::{json, Map, Value};

use crate::alarms;
use crate::layout::Layout;
use crate::model::GROUP_TAG;

pub(super) fn insert(layout: &Layout, resources: &mut Map<String, Value>) {
    if !layout.alarms {
        return;
    }
    for (i, a) in alarms::wanted(&layout.group, layout.zones.len() as u32)
        .iter()
        .enumerate()
    {
        resources.insert(
            format!("Alarm{i}"),
            json!({
                "Type": "AWS::CloudWatch::Alarm",
                "Properties": {
                    "AlarmName": a.name,
                    "AlarmDescription": a.description,
                    "ComparisonOperator": a.comparison.as_str(),
                    "Threshold": a.threshold,
                    "EvaluationPeriods": a.evaluation_periods,
                    "TreatMissingData": a.missing.as_str(),
                    "Metrics": [{
                        "Id": "q",
                        "Expression": a.query,
                        "Period": a.period,
                        "ReturnData": true,
                    }],
                    "Tags": [{ "Key": GROUP_TAG, "Value": layout.group }],
                }
            }),
        );
    }
}
