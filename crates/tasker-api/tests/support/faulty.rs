//! A store that passes every call to a real one, except that a test can make the reads the API
//! answers with fail (`Unavailable`) for a while right after a write commits, or make the
//! readiness probe's read hang: the faults of a database restart, at the moment that matters,
//! on a real backend.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use tasker_store::*;
use tasker_types::{
    DeadLetter, InstanceRow, QueueMessage, StepId, StepRow, TaskId, TaskRow, TaskState,
    TemplateRecord, TransitionRow,
};

#[derive(Debug)]
pub(crate) struct Faulty {
    inner: Arc<dyn Store>,
    /// After the next task write commits, reads fail for this long (ms; 0 = disarmed).
    outage_after_write_ms: AtomicU64,
    outage_until: Mutex<Option<Instant>>,
    hang_probe: AtomicBool,
}

impl Faulty {
    pub(crate) fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            outage_after_write_ms: AtomicU64::new(0),
            outage_until: Mutex::new(None),
            hang_probe: AtomicBool::new(false),
        })
    }

    /// The next task creation or task transition commits, then reads fail for `outage`.
    pub(crate) fn outage_after_next_write(&self, outage: Duration) {
        self.outage_after_write_ms
            .store(outage.as_millis().try_into().unwrap(), Ordering::SeqCst);
    }

    /// `queue_depth` (what `/health/ready` reads) never answers.
    pub(crate) fn hang_probe(&self, hang: bool) {
        self.hang_probe.store(hang, Ordering::SeqCst);
    }

    fn wrote(&self) {
        let ms = self.outage_after_write_ms.swap(0, Ordering::SeqCst);
        if ms > 0 {
            *self.outage_until.lock().unwrap() = Some(Instant::now() + Duration::from_millis(ms));
        }
    }

    fn read(&self) -> Result<()> {
        match *self.outage_until.lock().unwrap() {
            Some(until) if Instant::now() < until => {
                Err(StoreError::unavailable("injected outage after a commit"))
            }
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl TemplateStore for Faulty {
    async fn template_register(&self, p: &TemplateRegisterParams) -> Result<TemplateRecord> {
        self.inner.template_register(p).await
    }
    async fn template_get(&self, p: &TemplateGetParams) -> Result<TemplateRecord> {
        self.inner.template_get(p).await
    }
    async fn template_list(&self) -> Result<Vec<TemplateRecord>> {
        self.inner.template_list().await
    }
}

#[async_trait]
impl TaskStore for Faulty {
    async fn task_create(&self, p: &TaskCreateParams) -> Result<TaskCreated> {
        let out = self.inner.task_create(p).await;
        self.wrote();
        out
    }
    async fn task_create_many(&self, p: &[TaskCreateParams]) -> Result<Vec<TaskCreated>> {
        let out = self.inner.task_create_many(p).await;
        self.wrote();
        out
    }
    async fn task_get(&self, id: TaskId) -> Result<TaskRow> {
        self.read()?;
        self.inner.task_get(id).await
    }
    async fn task_list(&self, p: &TaskListParams) -> Result<Vec<TaskRow>> {
        self.inner.task_list(p).await
    }
    async fn task_count(&self, p: &TaskCountParams) -> Result<Vec<(TaskState, u64)>> {
        self.inner.task_count(p).await
    }
    async fn task_transition(&self, p: &TaskTransitionParams) -> Result<TaskRow> {
        let out = self.inner.task_transition(p).await;
        self.wrote();
        out
    }
    async fn task_claim(&self, p: &TaskClaimParams) -> Result<bool> {
        self.inner.task_claim(p).await
    }
    async fn task_release(&self, p: &TaskReleaseParams) -> Result<bool> {
        self.inner.task_release(p).await
    }
}

#[async_trait]
impl StepStore for Faulty {
    async fn step_list(&self, task_id: TaskId) -> Result<Vec<StepRow>> {
        self.read()?;
        self.inner.step_list(task_id).await
    }
    async fn step_get(&self, id: StepId) -> Result<StepRow> {
        self.read()?;
        self.inner.step_get(id).await
    }
    async fn step_edges(&self, task_id: TaskId) -> Result<Vec<(StepId, StepId)>> {
        self.read()?;
        self.inner.step_edges(task_id).await
    }
    async fn step_progress_many(&self, ids: &[TaskId]) -> Result<Vec<StepProgress>> {
        self.inner.step_progress_many(ids).await
    }
    async fn step_transition(&self, p: &StepTransitionParams) -> Result<StepRow> {
        self.inner.step_transition(p).await
    }
    async fn step_viable_many(&self, p: &StepViableManyParams) -> Result<Vec<StepRow>> {
        self.inner.step_viable_many(p).await
    }
    async fn step_enqueue_many(&self, p: &StepEnqueueManyParams) -> Result<Vec<StepId>> {
        self.inner.step_enqueue_many(p).await
    }
    async fn step_claim(&self, p: &StepClaimParams) -> Result<Vec<StepClaimed>> {
        self.inner.step_claim(p).await
    }
    async fn step_lease_extend(&self, p: &StepLeaseExtendParams) -> Result<Vec<StepId>> {
        self.inner.step_lease_extend(p).await
    }
    async fn step_apply_results(&self, p: &StepApplyResultsParams) -> Result<ResultsApplied> {
        self.inner.step_apply_results(p).await
    }
}

#[async_trait]
impl QueueStore for Faulty {
    async fn queue_enqueue_many(&self, p: &QueueEnqueueManyParams) -> Result<Vec<i64>> {
        self.inner.queue_enqueue_many(p).await
    }
    async fn queue_dequeue(&self, p: &QueueDequeueParams) -> Result<Vec<QueueMessage>> {
        self.inner.queue_dequeue(p).await
    }
    async fn queue_forward(&self, p: &QueueForwardParams) -> Result<Vec<i64>> {
        self.inner.queue_forward(p).await
    }
    async fn queue_get(&self, p: &QueueAckParams) -> Result<QueueMessage> {
        self.inner.queue_get(p).await
    }
    async fn queue_ack(&self, p: &QueueAckParams) -> Result<()> {
        self.inner.queue_ack(p).await
    }
    async fn queue_nack(&self, p: &QueueLeaseParams) -> Result<()> {
        self.inner.queue_nack(p).await
    }
    async fn queue_release(&self, p: &QueueLeaseParams) -> Result<()> {
        self.inner.queue_release(p).await
    }
    async fn queue_extend(&self, p: &QueueLeaseParams) -> Result<()> {
        self.inner.queue_extend(p).await
    }
    async fn queue_extend_many(&self, p: &QueueExtendManyParams) -> Result<Vec<i64>> {
        self.inner.queue_extend_many(p).await
    }
    async fn queue_depth(&self, queue: &str) -> Result<QueueDepth> {
        if self.hang_probe.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.queue_depth(queue).await
    }
    async fn dead_letter_list(&self, p: &DeadLetterListParams) -> Result<Vec<DeadLetter>> {
        self.inner.dead_letter_list(p).await
    }
    async fn dead_letter_get(&self, id: i64) -> Result<DeadLetter> {
        self.inner.dead_letter_get(id).await
    }
    async fn dead_letter_requeue(&self, id: i64) -> Result<i64> {
        self.inner.dead_letter_requeue(id).await
    }
    async fn dead_letter_discard(&self, id: i64) -> Result<()> {
        self.inner.dead_letter_discard(id).await
    }
}

#[async_trait]
impl TransitionLog for Faulty {
    async fn transition_list(&self, task_id: TaskId) -> Result<Vec<TransitionRow>> {
        self.read()?;
        self.inner.transition_list(task_id).await
    }
}

#[async_trait]
impl InstanceStore for Faulty {
    async fn instance_register(&self, p: &InstanceRegisterParams) -> Result<InstanceRow> {
        self.inner.instance_register(p).await
    }
    async fn instance_heartbeat(&self, p: &InstanceHeartbeatParams) -> Result<bool> {
        self.inner.instance_heartbeat(p).await
    }
    async fn instance_list(&self) -> Result<Vec<InstanceRow>> {
        self.inner.instance_list().await
    }
    async fn instance_deregister(&self, id: &str) -> Result<()> {
        self.inner.instance_deregister(id).await
    }
    async fn instance_release_leases(&self, holder: &str) -> Result<u64> {
        self.inner.instance_release_leases(holder).await
    }
    async fn leader_acquire(&self, holder: &str, ttl: Duration) -> Result<Option<i64>> {
        self.inner.leader_acquire(holder, ttl).await
    }
    async fn leader_release(&self, holder: &str) -> Result<()> {
        self.inner.leader_release(holder).await
    }
    async fn leader_get(&self) -> Result<LeaderLease> {
        self.inner.leader_get().await
    }
    async fn instance_fail_over(
        &self,
        leader: &str,
        epoch: i64,
        dead_after: Duration,
    ) -> Result<Vec<(String, u64)>> {
        self.inner
            .instance_fail_over(leader, epoch, dead_after)
            .await
    }
    async fn retention_sweep(&self, p: &RetentionSweepParams) -> Result<RetentionSwept> {
        self.inner.retention_sweep(p).await
    }
}

#[async_trait]
impl Store for Faulty {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
    fn connection_pool(&self) -> ConnectionPoolStats {
        self.inner.connection_pool()
    }
    async fn server_connection_limit(&self) -> Result<Option<u32>> {
        self.inner.server_connection_limit().await
    }
    async fn wakeup_subscribe(&self) -> Result<Option<tokio::sync::mpsc::Receiver<String>>> {
        self.inner.wakeup_subscribe().await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}
