//! natron's provisioner: builds natron's NAT topology in an existing VPC,
//! checks it and removes it. Pure core over plain data (`model`):
//! `layout` (input checked against the VPC), `plan` (apply and destroy
//! actions), `check`, `status`, `cost`, `documents` (IAM policy, agent
//! config). The cloud sits behind one trait (`cloud`); `apply` runs plans.

pub mod alarms;
pub mod apply;
pub mod check;
pub mod cloud;
pub mod cost;
pub mod documents;
pub mod export;
pub mod layout;
pub mod model;
pub mod plan;
pub mod publish;
pub mod regions;
pub mod report;
pub mod status;
