//! The daemon's side of a fleet group (`[fleet]`, docs/fleet.md): the gate
//! on etcd is started with the agent (it connects in the background; until
//! etcd answers, no update starts), and a task beside the loop publishes what
//! this host runs for `gpu-fleet hosts` and sets the fleet metrics.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Settings;
use crate::fleet::gate::GateOptions;
use crate::fleet::{Etcd, EtcdGate, EtcdOptions, HostReport};
use crate::update::ports::Fleet;
use crate::update::View;

/// How often the host record and the fleet metrics are brought up to date
/// (a report that did not change costs no request).
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// The gate of the host's group, when `[fleet]` is set. Fails only on what
/// the config names and cannot be read (TLS or password files): never
/// because etcd is not reachable now.
pub async fn start(settings: &Settings) -> anyhow::Result<Option<Arc<EtcdGate>>> {
    let Some(f) = &settings.fleet else {
        return Ok(None);
    };
    let etcd = Etcd::connect(&EtcdOptions::from(f))
        .await
        .with_context(|| format!("setting up the etcd client of fleet group {}", f.group))?;
    info!(group = %f.group, etcd = %etcd.endpoints(), host = %settings.agent.id,
          "fleet group configured: updates take one of the group's slots before the worker is disrupted");
    Ok(Some(Arc::new(EtcdGate::start(
        etcd,
        GateOptions::new(settings.agent.id.clone(), f.group.clone()),
    ))))
}

/// The last history event in a few words, kept by [`last_event_subscriber`].
pub type LastEvent = Arc<Mutex<Option<String>>>;

/// A subscriber of the update's events that keeps the last history entry
/// in words (`update success sha256:…`) for the host record.
pub fn last_event_subscriber(last: LastEvent) -> crate::update::Subscriber {
    Box::new(move |e| {
        if let crate::update::Event::History { entry, .. } = e {
            let words = format!(
                "{} {} {}",
                serde_json::to_value(entry.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                serde_json::to_value(entry.outcome)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                entry.to.as_deref().unwrap_or("-"),
            );
            if let Ok(mut l) = last.lock() {
                *l = Some(words);
            }
        }
    })
}

/// Publishes the host record and sets the fleet metrics until `stop`.
pub async fn report(
    fleet: Arc<EtcdGate>,
    mut view: watch::Receiver<View>,
    gpu_check: bool,
    last: LastEvent,
    stop: CancellationToken,
) {
    let metrics = crate::metrics::global();
    loop {
        let report = {
            let v = view.borrow_and_update();
            HostReport {
                digest: v.state.current_digest.clone(),
                phase: v.phase.as_str().to_string(),
                gpu: match (&v.state.gpu_hold, gpu_check) {
                    (Some(_), _) => "degraded".into(),
                    (None, true) => "ok".into(),
                    (None, false) => "unknown".into(),
                },
                last_event: last.lock().ok().and_then(|l| l.clone()),
            }
        };
        fleet.report_host(report).await;
        let fv = fleet.view();
        metrics.set_fleet_slot_held(fv.slot.is_some());
        metrics.set_fleet_etcd_reachable(&fv.group, fv.etcd_reachable);
        metrics.set_fleet_rollout_state(fv.rollout_state.map(|s| s.as_str()));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REPORT_EVERY) => {}
            // A phase change is published at once (gpu-fleet hosts shows it).
            r = view.changed() => if r.is_err() { return },
        }
    }
}
