//! The router and IGW kept in step with the emulator, every 100 ms.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::router::{self, Attachments, RouterConfig, TableIds};
use crate::vpc::{self, VpcView};
use crate::LabError;

/// Default-route changes per route table, as the lab's router saw them.
pub type RouteHistory = Arc<Mutex<BTreeMap<String, Vec<(Instant, Option<vpc::Target>)>>>>;

/// Keeps the router and IGW in step with the emulator.
pub(super) struct Syncer {
    pub(super) history: RouteHistory,
    pub(super) ec2: aws_sdk_ec2::Client,
    pub(super) vpc_id: String,
    pub(super) router_ns: String,
    pub(super) igw_ns: String,
    pub(super) attachments: Arc<Mutex<Attachments>>,
    pub(super) ids: TableIds,
    pub(super) applied: Option<RouterConfig>,
    pub(super) view: Arc<RwLock<VpcView>>,
    pub(super) error: Arc<Mutex<Option<String>>>,
}

impl Syncer {
    pub(super) async fn pass(&mut self) -> Result<(), LabError> {
        let result = self.pass_inner().await;
        *self.error.lock().expect("sync") = result.as_ref().err().map(|e| e.to_string());
        result
    }

    async fn pass_inner(&mut self) -> Result<(), LabError> {
        let view = vpc::read(&self.ec2, &self.vpc_id).await?;
        let config = {
            let attachments = self.attachments.lock().expect("attachments");
            router::render(&view, &attachments, &mut self.ids)
        };
        {
            let mut history = self.history.lock().expect("history");
            for t in &view.route_tables {
                let target = view.default_target(&t.id);
                let changes = history.entry(t.id.clone()).or_default();
                if changes.last().map(|(_, last)| last) != Some(&target) {
                    changes.push((Instant::now(), target));
                }
            }
        }
        *self.view.write().expect("view") = view;
        if self.applied.as_ref() == Some(&config) {
            return Ok(());
        }
        let (rtr, igw, old, new) = (
            self.router_ns.clone(),
            self.igw_ns.clone(),
            self.applied.clone(),
            config.clone(),
        );
        tokio::task::spawn_blocking(move || router::apply(&rtr, &igw, old.as_ref(), &new))
            .await
            .map_err(|e| LabError::Setup(format!("router sync task: {e}")))??;
        self.applied = Some(config);
        Ok(())
    }
}
