//! Layer 1, the pure core: decisions over plain data, with no I/O. The
//! configuration and its validation, who serves which route table, the
//! AZ's Elastic IP, health hysteresis, when to read EC2, the ruleset and
//! the kernel settings. Imports only the model.

pub mod address;
pub mod cloudwatch;
pub mod config;
pub mod failover;
pub mod health;
pub mod jool;
pub mod kernel;
pub mod listing;
pub mod peer;
pub mod pool;
pub mod ports;
pub mod ruleset;
pub mod schedule;
pub mod settings;
