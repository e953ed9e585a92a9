//! The control topic: every node announces itself every `interval` (its wall clock, its
//! address and its replication report), and early whenever its consumer gets further,
//! so that a write waiting for its replication learns of it in a broker
//! round trip. It reads its peers' heartbeats (from the end of the topic: only fresh ones
//! matter) to know its members and their clocks, and hands the other control records
//! (summaries, bucket listings, join requests) to the repair task.

use std::{sync::Arc, time::Duration};

use kvsync_core::{cluster::Control, Heartbeat};
use kvsync_kafka::{KafkaSettings, Publisher, Start, Subscriber};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use crate::{
    app::{now_ms, App},
    replicator::ReplicationStatus,
};

pub struct ControlSettings {
    pub kafka: KafkaSettings,
    pub publisher: Publisher,
    pub interval: Duration,
    pub status: Arc<ReplicationStatus>,
}

pub async fn run(
    app: Arc<App>,
    settings: ControlSettings,
    control_tx: mpsc::Sender<Control>,
    mut topic_ready: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> Result<(), kvsync_kafka::BusError> {
    let ControlSettings {
        kafka,
        publisher,
        interval,
        status,
    } = settings;
    let topic = kafka.control_topic();
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = topic_ready.wait_for(|ready| *ready) => if r.is_err() { return Ok(()) },
    }
    let subscriber = Subscriber::new(&kafka, &topic, None)?;
    // One partition (the node creates it so); an operator-made topic with more would
    // only lose records keyed to the others, which every rule here tolerates: heartbeats
    // and summaries come again, and a joiner that hears nothing replays the topic.
    subscriber.assign(&[(0, Start::End)])?;
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // At most one heartbeat in flight: a broker that does not answer gets no pile-up,
    // and progress made meanwhile goes in the next one.
    let mut sending: Option<JoinHandle<()>> = None;
    let mut again = false;
    loop {
        let send_now = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => true,
            // Progress goes out as it happens only while a peer waits for it.
            _ = status.progress.notified() => app.cluster.progress_wanted(),
            _ = app.cluster.report_now.notified() => true,
            _ = async { sending.as_mut().expect("guarded").await.ok() }, if sending.is_some() => {
                sending = None;
                std::mem::take(&mut again)
            }
            m = subscriber.recv() => {
                match m {
                    Ok(d) => {
                        let Some(payload) = d.payload() else { continue };
                        if let Some(hb) = Heartbeat::decode(payload) {
                            app.clock.heard(&hb);
                            app.cluster.heard(&hb);
                        } else if let Some(record) = Control::decode(payload) {
                            if record.node() != &app.node && control_tx.try_send(record).is_err() {
                                tracing::debug!("repair task busy; a control record is dropped (it comes again)");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "control topic consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                false
            }
        };
        if !send_now {
            continue;
        }
        if sending.is_some() {
            again = true;
            continue;
        }
        let mut hb = Heartbeat::new(app.node.clone(), now_ms(), app.cluster.started_ms());
        hb.report = app.cluster.report(&status);
        hb.waiting = app.cluster.waiting();
        let (publisher, topic) = (publisher.clone(), topic.clone());
        app.metrics.heartbeats_sent.inc();
        sending = Some(tokio::spawn(async move {
            if let Err(e) = publisher.send(&topic, hb.node.as_str(), &hb.encode()).await {
                tracing::debug!(error = %e, "heartbeat not sent");
            }
        }));
    }
}
