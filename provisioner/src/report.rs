//! The JSON documents `--output json` prints for `plan`, `apply` and
//! `destroy` (schema in docs/provisioner.md). One document per command,
//! so a pipeline can parse it whole and gate on `changes`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::layout::Layout;
use crate::plan::{Action, Plan};

/// A plan: what `plan`, `plan --destroy` and the first part of `apply`
/// and `destroy` decide.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub vpc: String,
    pub group: String,
    /// What `apply` builds (absent for a removal plan).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// False when the VPC already matches: nothing to change.
    pub changes: bool,
    pub actions: Vec<ActionReport>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionReport {
    /// 1-based position in the plan.
    pub index: usize,
    /// The kind of resource: subnet, security_group, route_table, …
    pub resource: &'static str,
    /// The words `plan` prints for it.
    pub description: String,
    /// `action` (snake_case kind) and its fields.
    #[serde(flatten)]
    pub action: Action,
}

impl PlanReport {
    pub fn new(vpc: &str, group: &str, layout: Option<&Layout>, plan: &Plan) -> PlanReport {
        PlanReport {
            vpc: vpc.to_string(),
            group: group.to_string(),
            layout: layout.cloned(),
            changes: !plan.actions.is_empty(),
            actions: plan
                .actions
                .iter()
                .enumerate()
                .map(|(i, a)| ActionReport {
                    index: i + 1,
                    resource: a.resource(),
                    description: a.to_string(),
                    action: a.clone(),
                })
                .collect(),
            notes: plan.notes.clone(),
        }
    }
}

/// What `apply` or `destroy` did.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub plan: PlanReport,
    /// Actions carried out, in order, by their plan index.
    pub carried_out: Vec<usize>,
    /// Resources created, as the plan named them, with their new ids.
    pub created: Vec<Created>,
    /// After the wait of `apply`: each of the group's route tables and the
    /// NAT instance that serves it.
    pub served: BTreeMap<String, String>,
    /// Associations left for a later apply (`apply --no-wait`).
    pub pending: Vec<String>,
    /// True when everything asked for is in place.
    pub complete: bool,
    /// Why not, when `complete` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Created {
    pub what: String,
    pub id: String,
}

impl RunReport {
    pub fn new(plan: PlanReport) -> RunReport {
        RunReport {
            plan,
            carried_out: Vec::new(),
            created: Vec::new(),
            served: BTreeMap::new(),
            pending: Vec::new(),
            complete: false,
            error: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Peer, Permission, Ref};

    #[test]
    fn actions_serialize_with_kind_resource_and_words() {
        let plan = Plan {
            actions: vec![Action::AuthorizeIngress {
                group: Ref::New("security group".into()),
                rules: vec![Permission {
                    protocol: "-1".into(),
                    from_port: None,
                    to_port: None,
                    peer: Peer::Cidr("10.0.10.0/24".parse().unwrap()),
                }],
            }],
            notes: vec![],
        };
        let v = serde_json::to_value(PlanReport::new("vpc-1", "g", None, &plan)).unwrap();
        assert_eq!(v["changes"], true);
        let a = &v["actions"][0];
        assert_eq!(a["index"], 1);
        assert_eq!(a["action"], "authorize_ingress");
        assert_eq!(a["resource"], "security_group");
        assert_eq!(a["group"]["new"], "security group");
        assert_eq!(a["rules"][0]["peer"]["cidr"], "10.0.10.0/24");
        assert_eq!(
            a["description"],
            "allow into <new security group>: all traffic from 10.0.10.0/24"
        );
        assert!(v.get("layout").is_none());
    }
}
