//! The CloudWatch publisher (`metrics.cloudwatch`): every interval, one
//! PutMetricData call with the NAT Gateway's metric set
//! (`core::cloudwatch`). A failure backs off and is retried; the counts
//! it carried go out with the next publication that succeeds. Nothing here
//! touches the data plane or readiness: a CloudWatch outage is a warning.

use std::sync::Arc;

use natron_contract::readyz::Area;
use tracing::{info, warn};

use crate::core::cloudwatch::{self, Sample};
use crate::core::schedule::{Backoff, Repeats};
use crate::core::settings::CloudWatch;
use crate::edge::cloudwatch::Publish;
use crate::report::status::Shared;

/// The metrics' dimensions: this NAT and its group.
pub fn dimensions(instance_id: &str, group: &str) -> Vec<(String, String)> {
    vec![
        (
            natron_contract::cloudwatch::DIMENSION_INSTANCE.to_string(),
            instance_id.to_string(),
        ),
        (
            natron_contract::cloudwatch::DIMENSION_GROUP.to_string(),
            group.to_string(),
        ),
    ]
}

/// Publishes until the agent stops; never returns.
pub async fn publish(
    sink: Arc<dyn Publish>,
    shared: Arc<Shared>,
    settings: CloudWatch,
    dimensions: Vec<(String, String)>,
) {
    // Counters since the agent started: the first publication carries
    // everything counted so far.
    let mut published = Sample::default();
    let mut backoff = Backoff::default();
    let mut failing = Repeats::default();
    let mut wait = settings.interval;
    loop {
        tokio::time::sleep(wait).await;
        let now = shared.metrics.cloudwatch_sample();
        let data = cloudwatch::data(&published, &now);
        match sink.put(&settings.namespace, &dimensions, &data).await {
            Ok(()) => {
                published = now;
                backoff.succeed();
                wait = settings.interval;
                shared.metrics.cloudwatch_publications.inc();
                if failing.over() {
                    info!(namespace = %settings.namespace, "metrics reach CloudWatch again");
                }
                shared.update(|s| s.set_warning(Area::CloudWatch, None));
            }
            Err(e) => {
                wait = backoff
                    .fail(e.kind, super::backoff_jitter())
                    .min(settings.interval);
                shared.metrics.cloudwatch_failures.inc();
                if failing.due(&e.to_string(), std::time::Instant::now()) {
                    warn!(error = %e, "cannot publish metrics to CloudWatch; retrying in {wait:?} (said once a minute while it lasts)");
                }
                let message = format!("PutMetricData in namespace {}: {e}", settings.namespace);
                shared.update(|s| s.set_warning(Area::CloudWatch, Some(message)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::edge::cloudwatch::fake::FakeCloudWatch;
    use crate::edge::ec2::fake::throttled;

    fn value(data: &[cloudwatch::Datum], name: &str) -> f64 {
        data.iter().find(|d| d.name == name).unwrap().value
    }

    /// A failed publication loses nothing: the next one carries its counts;
    /// meanwhile /status warns.
    #[tokio::test(start_paused = true)]
    async fn a_failed_publication_is_carried_by_the_next() {
        let sink = Arc::new(FakeCloudWatch::default());
        let shared = Arc::new(Shared::new());
        let settings = CloudWatch {
            namespace: "natron".into(),
            interval: Duration::from_secs(60),
        };
        let task = tokio::spawn(publish(
            sink.clone(),
            shared.clone(),
            settings,
            dimensions("i-1", "g"),
        ));
        shared.metrics.nat_connections.inc_by(5);
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(sink.published.lock().unwrap().len(), 1);
        assert_eq!(
            value(&sink.published.lock().unwrap()[0], "ConnectionAttemptCount"),
            5.0
        );

        sink.fail_next
            .lock()
            .unwrap()
            .push(throttled("PutMetricData"));
        shared.metrics.nat_connections.inc_by(3);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(sink.published.lock().unwrap().len(), 1, "the second failed");
        assert!(shared
            .snapshot()
            .warnings
            .iter()
            .any(|w| w.area == Area::CloudWatch));
        shared.metrics.nat_connections.inc_by(2);
        // The retry comes within the backoff, before the next interval.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let published = sink.published.lock().unwrap().clone();
        assert_eq!(published.len(), 2);
        assert_eq!(value(&published[1], "ConnectionAttemptCount"), 5.0);
        assert!(shared
            .snapshot()
            .warnings
            .iter()
            .all(|w| w.area != Area::CloudWatch));
        assert_eq!(shared.metrics.cloudwatch_failures.get(), 1);
        assert_eq!(shared.metrics.cloudwatch_publications.get(), 2);
        task.abort();
    }
}
