//! This instance's place in the cluster: it registers when the engine starts, heartbeats on
//! the database clock, and deregisters when it stops, after ending the leases it still held.
//!
//! Each heartbeat also takes or renews the cluster's leadership (a lease row with an epoch,
//! held for [`ClusterConfig::dead_after`]): one instance leads at a time, and another takes
//! over within a heartbeat of the leader's lapse. The leader fails over the instances found
//! dead (no heartbeat for `dead_after`): their step leases end at once, so their running steps
//! are claimed again within seconds rather than after a lease, and their registration goes;
//! the store does that only while the leader's epoch holds. An instance only slow, not dead,
//! finds itself deregistered at its next heartbeat, registers again, and its late results are
//! refused by their lease.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use tasker_store::{
    InstanceHeartbeatParams, InstanceRegisterParams, RetentionSweepParams, RetentionSwept, Store,
    StoreError,
};
use tasker_types::{InstanceRow, InstanceState};
use tokio_util::sync::CancellationToken;

use crate::runtime::metrics::ClusterMetrics;

/// Heartbeats, failure detection and what the leader keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Time between heartbeats.
    pub heartbeat: Duration,
    /// An instance whose last heartbeat is older than this is dead.
    pub dead_after: Duration,
    /// How long finished work is kept.
    pub retention: RetentionConfig,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            retention: RetentionConfig::default(),
        }
    }
}

/// How long finished work is kept before the leader deletes it, a batch every
/// [`RetentionConfig::every_beats`] heartbeats; `None` keeps it forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Tasks finished `Complete`, `Cancelled` or `ResolvedManually`, with their steps, edges
    /// and transitions.
    pub complete: Option<Duration>,
    /// Tasks in `Error`, likewise (counted from when they failed).
    pub error: Option<Duration>,
    /// Dead letters.
    pub dead_letters: Option<Duration>,
    /// Tasks (and dead letters) deleted per sweep at most: small, so the hot path never waits
    /// on a long delete.
    pub batch: u32,
    /// The leader sweeps on every this many heartbeats.
    pub every_beats: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        Self {
            complete: Some(DAY * 7),
            error: Some(DAY * 30),
            dead_letters: Some(DAY * 30),
            batch: 500,
            every_beats: 10,
        }
    }
}

/// The cluster as one instance sees it: every registered instance, judged alive or dead by
/// that instance's bound.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterView {
    /// The instance answering.
    pub instance_id: String,
    /// Its bound: an instance silent for longer is dead.
    pub dead_after_ms: u64,
    /// The leader, if its holding has not lapsed.
    pub leader: Option<String>,
    /// The leadership's epoch: each new holding takes the next.
    pub leader_epoch: i64,
    /// Every registered instance, oldest first.
    pub instances: Vec<InstanceView>,
}

/// One registered instance in a [`ClusterView`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceView {
    /// As the store has it.
    #[serde(flatten)]
    pub row: InstanceRow,
    /// Milliseconds since its last heartbeat (database clock).
    pub heartbeat_age_ms: i64,
    /// Heartbeating within the bound.
    pub alive: bool,
    /// The instance answering.
    pub this: bool,
}

/// The cluster as `instance_id` sees it.
///
/// # Errors
///
/// Store failures.
pub async fn view(
    store: &dyn Store,
    instance_id: &str,
    config: ClusterConfig,
) -> Result<ClusterView, StoreError> {
    let leadership = store.leader_get().await?;
    let instances = store
        .instance_list()
        .await?
        .into_iter()
        .map(|row| InstanceView {
            heartbeat_age_ms: row.read_at_ms.saturating_sub(row.heartbeat_at_ms).max(0),
            alive: !row.is_dead(config.dead_after),
            this: row.id == instance_id,
            row,
        })
        .collect();
    Ok(ClusterView {
        instance_id: instance_id.to_owned(),
        dead_after_ms: u64::try_from(config.dead_after.as_millis()).unwrap_or(u64::MAX),
        leader: leadership.leader().map(str::to_owned),
        leader_epoch: leadership.epoch,
        instances,
    })
}

/// What this instance registers as.
pub fn registration(store: &dyn Store, instance_id: &str) -> InstanceRegisterParams {
    InstanceRegisterParams {
        id: instance_id.to_owned(),
        host: host_name(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        connections: store.connection_pool().max_connections,
    }
}

/// The connections the live instances' pools and this one's would open, against what the
/// database server allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// What the server allows clients in all; `None` without a server (SQLite).
    pub limit: Option<u32>,
    /// The other live instances and their pools.
    pub others: Vec<(String, u32)>,
    /// This instance's pool.
    pub own: u32,
}

impl ConnectionBudget {
    /// Whether every pool fits the server at once.
    pub fn fits(&self) -> bool {
        self.limit.is_none_or(|limit| self.total() <= limit)
    }

    /// The connections this instance may use for everything to fit (its own pool's size when
    /// it does).
    pub fn allowed(&self) -> u32 {
        match self.limit {
            Some(limit) => limit.saturating_sub(self.others_total()).min(self.own),
            None => self.own,
        }
    }

    fn others_total(&self) -> u32 {
        self.others.iter().map(|(_, c)| *c).sum()
    }

    fn total(&self) -> u32 {
        self.others_total().saturating_add(self.own)
    }

    /// The numbers, for an operator.
    pub fn describe(&self) -> String {
        let others: Vec<String> = self
            .others
            .iter()
            .map(|(id, c)| format!("{id} {c}"))
            .collect();
        format!(
            "the cluster would open {} connections (this instance {}{}{}), the server allows {} \
             (max_connections less the superuser reserve); lower database.max_connections, run \
             fewer instances, or raise the server's max_connections",
            self.total(),
            self.own,
            if others.is_empty() {
                ""
            } else {
                ", live instances: "
            },
            others.join(", "),
            self.limit
                .map_or_else(|| "any number".to_owned(), |l| l.to_string())
        )
    }
}

/// The budget `instance_id` would start into: the server's limit and the live instances'
/// pools.
///
/// # Errors
///
/// Store failures.
pub async fn connection_budget(
    store: &dyn Store,
    instance_id: &str,
    config: ClusterConfig,
) -> Result<ConnectionBudget, StoreError> {
    let limit = store.server_connection_limit().await?;
    let others = if limit.is_some() {
        store
            .instance_list()
            .await?
            .into_iter()
            .filter(|i| i.id != instance_id && !i.is_dead(config.dead_after))
            .map(|i| (i.id, i.connections))
            .collect()
    } else {
        Vec::new()
    };
    Ok(ConnectionBudget {
        limit,
        others,
        own: store.connection_pool().max_connections,
    })
}

/// The host's name, as the kernel has it (`localhost` when it cannot be read).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Heartbeats until `stop`, failing dead instances over on each beat while leading, and
/// reporting `Draining` once `draining` is set. Store errors are logged and the next beat tries
/// again (a database restart must not stop the instance).
pub async fn heartbeat(
    store: Arc<dyn Store>,
    instance_id: String,
    config: ClusterConfig,
    metrics: ClusterMetrics,
    draining: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    // The instance registered as it started; beats follow half a period later, out of step
    // with the monitor's once-a-second observations, which would otherwise find the (SQLite:
    // single) writer busy with a heartbeat at every one of them.
    let mut ticks = tokio::time::interval_at(
        tokio::time::Instant::now() + config.heartbeat / 2,
        config.heartbeat,
    );
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beats: u32 = 0;
    let mut recorded = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        beats = beats.wrapping_add(1);
        let sweep = beats % config.retention.every_beats.max(1) == 0;
        let state = if draining.load(Ordering::Relaxed) {
            InstanceState::Draining
        } else {
            InstanceState::Running
        };
        if let Err(error) = record(store.as_ref(), &instance_id, state).await {
            tracing::warn!(%error, "cluster heartbeat failed; trying again at the next");
            continue;
        }
        let silent = recorded.elapsed();
        recorded = tokio::time::Instant::now();
        if silent > config.dead_after {
            // Its heartbeat unrecorded that long (the database was down, say), this instance
            // counts as dead, whether or not a leader declared it so: what it held is released
            // now, so that it runs again at once rather than after its leases. Work of it still
            // running is fenced by its lease tokens, as on any failover; claims taken since the
            // database came back (within a heartbeat) are released too, their attempts retried.
            match store.instance_release_leases(&instance_id).await {
                Ok(released) => tracing::warn!(
                    silent_ms = u64::try_from(silent.as_millis()).unwrap_or(u64::MAX),
                    released,
                    "heartbeats failed for longer than cluster.dead_after; released what this \
                     instance held"
                ),
                Err(error) => tracing::warn!(%error, "could not release this instance's leases"),
            }
        }
        if let Err(error) = lead(store.as_ref(), &instance_id, config, &metrics, sweep).await {
            tracing::warn!(%error, "leader duties failed; trying again at the next heartbeat");
        }
    }
}

/// One heartbeat: [`record`] it, then [`lead`].
pub async fn beat(
    store: &dyn Store,
    instance_id: &str,
    state: InstanceState,
    config: ClusterConfig,
    metrics: &ClusterMetrics,
    sweep: bool,
) -> Result<(), StoreError> {
    record(store, instance_id, state).await?;
    lead(store, instance_id, config, metrics, sweep).await
}

/// Records a heartbeat in `state`, registering again if this instance was declared dead.
async fn record(
    store: &dyn Store,
    instance_id: &str,
    state: InstanceState,
) -> Result<(), StoreError> {
    let params = InstanceHeartbeatParams {
        id: instance_id.to_owned(),
        state,
    };
    if !store.instance_heartbeat(&params).await? {
        tracing::warn!(
            instance = instance_id,
            "this instance was declared dead; registering again"
        );
        store
            .instance_register(&registration(store, instance_id))
            .await?;
    }
    Ok(())
}

/// Takes or renews the leadership and, leading, fails the dead over and, on a `sweep` beat,
/// deletes a batch of what retention keeps no longer.
async fn lead(
    store: &dyn Store,
    instance_id: &str,
    config: ClusterConfig,
    metrics: &ClusterMetrics,
    sweep: bool,
) -> Result<(), StoreError> {
    let acquired = store.leader_acquire(instance_id, config.dead_after).await;
    // Not knowing (an error) is not leading.
    metrics.record_leadership(acquired.as_ref().ok().copied().flatten());
    let Some(epoch) = acquired? else {
        return Ok(());
    };
    for (dead, released) in store
        .instance_fail_over(instance_id, epoch, config.dead_after)
        .await?
    {
        metrics.record_failover(released);
        tracing::warn!(
            instance = %dead,
            released,
            leader_epoch = epoch,
            "instance declared dead; its leases are released"
        );
    }
    if !sweep {
        return Ok(());
    }
    let retention = config.retention;
    let swept = store
        .retention_sweep(&RetentionSweepParams {
            leader: instance_id.to_owned(),
            epoch,
            complete: retention.complete,
            error: retention.error,
            dead_letters: retention.dead_letters,
            batch: retention.batch,
        })
        .await?;
    metrics.record_retention(swept.tasks, swept.dead_letters);
    if swept != RetentionSwept::default() {
        tracing::info!(
            tasks = swept.tasks,
            dead_letters = swept.dead_letters,
            "retention: deleted what is kept no longer"
        );
    }
    Ok(())
}

/// Ends the leases this instance still holds (steps whose batches were aborted at shutdown),
/// gives up the leadership if it has it, and removes its registration. Best effort: what fails
/// here, the leader's failover finishes.
pub async fn leave(store: &dyn Store, instance_id: &str) {
    if let Err(error) = store.leader_release(instance_id).await {
        tracing::warn!(%error, "could not give up the leadership");
    }
    match store.instance_release_leases(instance_id).await {
        Ok(0) => {}
        Ok(released) => tracing::info!(released, "released the leases still held"),
        Err(error) => tracing::warn!(%error, "could not release this instance's leases"),
    }
    if let Err(error) = store.instance_deregister(instance_id).await {
        tracing::warn!(%error, "could not deregister this instance");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(heartbeat_at_ms: i64, read_at_ms: i64) -> InstanceRow {
        InstanceRow {
            id: "i".into(),
            host: "h".into(),
            pid: 1,
            version: "v".into(),
            connections: 0,
            state: InstanceState::Running,
            started_at_ms: 0,
            heartbeat_at_ms,
            read_at_ms,
            leases: 0,
        }
    }

    #[test]
    fn a_budget_fits_or_names_its_numbers_and_what_is_left() {
        let budget = ConnectionBudget {
            limit: Some(90),
            others: vec![("a".into(), 32), ("b".into(), 32)],
            own: 32,
        };
        assert!(!budget.fits());
        assert_eq!(budget.allowed(), 26, "what the others leave");
        let said = budget.describe();
        for number in ["open 96", "this instance 32", "a 32", "b 32", "allows 90"] {
            assert!(said.contains(number), "{number}: {said}");
        }
        let fits = ConnectionBudget {
            limit: Some(100),
            ..budget.clone()
        };
        assert!(fits.fits());
        assert_eq!(fits.allowed(), 32, "its own pool when everything fits");
        let no_server = ConnectionBudget {
            limit: None,
            ..budget
        };
        assert!(no_server.fits());
        assert_eq!(no_server.allowed(), 32);
    }

    #[test]
    fn dead_means_silent_for_longer_than_the_bound() {
        let bound = ClusterConfig::default().dead_after;
        assert!(!row(10_000, 15_000).is_dead(bound), "exactly the bound");
        assert!(row(10_000, 15_001).is_dead(bound));
        assert!(
            !row(10_000, 9_000).is_dead(bound),
            "a clock read before the beat"
        );
    }
}
