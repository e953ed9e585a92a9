//! Membership heartbeats on the control topic: every node announces its physical wall
//! clock every `interval`, and reads its peers' announcements (from the end of the
//! topic: only fresh ones matter) to estimate their clocks (`ClockWatch`).

use std::{sync::Arc, time::Duration};

use kvsync_core::Heartbeat;
use kvsync_kafka::{KafkaSettings, Publisher, Start, Subscriber};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::app::{now_ms, App};

pub async fn run(
    app: Arc<App>,
    kafka: KafkaSettings,
    publisher: Publisher,
    interval: Duration,
    mut topic_ready: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> Result<(), kvsync_kafka::BusError> {
    let started_ms = now_ms();
    let topic = kafka.control_topic();
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = topic_ready.wait_for(|ready| *ready) => if r.is_err() { return Ok(()) },
    }
    let subscriber = Subscriber::new(&kafka, &topic, None)?;
    // One partition (the node creates it so); an operator-made topic with more would
    // only lose heartbeats keyed to the others, which the clock rules tolerate.
    subscriber.assign(&[(0, Start::End)])?;
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // At most one heartbeat in flight: a broker that does not answer gets no pile-up.
    let mut sending: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {
                if sending.as_ref().is_some_and(|s| !s.is_finished()) {
                    continue;
                }
                let hb = Heartbeat::new(app.node.clone(), now_ms(), started_ms);
                let (publisher, topic) = (publisher.clone(), topic.clone());
                sending = Some(tokio::spawn(async move {
                    if let Err(e) = publisher.send(&topic, hb.node.as_str(), &hb.encode()).await {
                        tracing::debug!(error = %e, "heartbeat not sent");
                    }
                }));
            }
            m = subscriber.recv() => match m {
                Ok(d) => {
                    if let Some(hb) = d.payload().and_then(Heartbeat::decode) {
                        app.clock.heard(&hb);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "control topic consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}
