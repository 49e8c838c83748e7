//! Shutdown: stop reading, let the events in flight finish (within the drain timeout), publish
//! what can be published, and report what was left open for redelivery.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::admission::Intake;
use super::shared::{PipelineError, Summary};

impl Intake {
    pub(super) async fn drain(self, received: u64) -> Result<Summary, PipelineError> {
        let handle = self.core.handle.clone();
        let open = self.core.shared.tracker().open();
        if !handle.kill.is_cancelled() {
            tracing::info!(
                open,
                grace = %humantime::format_duration(self.settings.shutdown_grace),
                "stopping: no new events are read; waiting for in-flight events"
            );
        }
        self.tasks.close();
        let finished = tokio::select! {
            _ = self.tasks.wait() => true,
            _ = handle.kill.cancelled() => false,
            _ = tokio::time::sleep(self.settings.shutdown_grace) => false,
        };
        if !finished {
            handle.kill.cancel();
            self.tasks.wait().await;
        }
        let left_open = self.core.shared.tracker().open();
        if left_open > 0 {
            tracing::warn!(
                left_open,
                "events left unfinished; their offsets were not stored and they will be delivered again"
            );
        }
        let core = self.core.clone();
        if let Some(transactions) = self.core.shared.transactions.clone()
            && !handle.kill.is_cancelled()
        {
            // The last transaction. A failed worker's may hold a record that was never
            // delivered: it is aborted, and its events come again after the restart.
            let consumer = core.consumer.clone();
            let failed = core.failed.load(Ordering::SeqCst);
            let committed = tokio::task::spawn_blocking(move || {
                if failed {
                    transactions.abort();
                    return Ok(());
                }
                transactions.commit(consumer.group_metadata())
            })
            .await;
            match committed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "final transaction failed"),
                Err(e) => tracing::warn!(error = %e, "final transaction did not run"),
            }
        } else if !handle.kill.is_cancelled() {
            // Commit what is stored now rather than at the next auto-commit tick.
            let committed = tokio::task::spawn_blocking(move || {
                let result = core.consumer.commit_consumer_state(CommitMode::Sync);
                core.publisher.flush(Duration::from_secs(10));
                result
            })
            .await;
            match committed {
                Ok(Ok(())) | Ok(Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "final commit failed; the last events may be delivered again")
                }
                Err(e) => tracing::warn!(error = %e, "final commit did not run"),
            }
        }
        let summary = Summary {
            received,
            dead_letters: self.core.dead_letters.load(Ordering::Relaxed),
            outcomes: self
                .core
                .outcomes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            left_open,
        };
        let fatal = self
            .core
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match fatal {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }
}
