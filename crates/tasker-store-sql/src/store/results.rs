//! Applying a batch of step results: the store keeps the counters that `tasker_types::settle`
//! reads and applies the effects it returns, each guarded by the state it was decided on. The
//! rules themselves live in `settle`.
//!
//! A batch is two operations, whatever its size: [`Backend::move_steps`] moves
//! the steps and counts them on their tasks and children; settlement decides; then
//! [`Backend::apply_effects`] applies its effects with the audit rows and messages. The
//! functions here are those operations as a few portable statements each, which a backend
//! uses unless it does one in a single statement (PostgreSQL, with data-modifying CTEs).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use tasker_store::{QueueAckParams, Result, ResultsApplied, StepApplyResultsParams};
use tasker_store::{StepResultApply, TaskMessage};
use tasker_types::{settle, Entity, StepEvent, StepId, StepRow, StepState, TaskId, TaskRow};

use super::{commit, delete_consumed, Backend, Conn, Sql, SqlStore};
use crate::{
    corrupt, duration_ms, qualified, step as decode_step, task as decode_task, NewTransition,
    Outbox, RowExt, INSERT_CHUNK, STEP_COLUMNS, TASK_COLUMNS,
};

/// One result to apply: its step moves to `to` only while it runs `attempt`.
#[derive(Debug, Clone)]
pub struct StepMove<'a> {
    /// The step's task.
    pub task_id: TaskId,
    /// The step.
    pub step_id: StepId,
    /// The attempt the result is for.
    pub attempt: i64,
    /// Where the step moves.
    pub to: StepState,
    /// The handler's output, kept on success.
    pub output: Option<&'a serde_json::Value>,
    /// The failure, kept on failure.
    pub error: Option<&'a str>,
    /// The wait before a retry, for a retryable failure.
    pub backoff_ms: Option<i64>,
    /// Only while this lease holds the step, when the result names one.
    pub lease_token: Option<&'a str>,
}

/// What moving a batch changed, read back for settlement.
#[derive(Debug, Clone, Default)]
pub struct Counted {
    /// The steps that moved (stale and duplicate results move none).
    pub moved: Vec<StepRow>,
    /// Their tasks, with the finished steps counted.
    pub tasks: Vec<settle::TaskCount>,
    /// Their tasks' namespaces, for routing.
    pub namespaces: HashMap<TaskId, String>,
    /// The children of the steps that finished for their dependents, with their parents
    /// counted.
    pub children: Vec<StepRow>,
}

/// The changes settlement chose, ready to write: each applied only while the state it was
/// decided on holds.
#[derive(Debug, Clone)]
pub struct EffectsPlan<'a> {
    /// Children to enqueue while still `Pending`, each with the queue it waits in.
    pub enqueue: Vec<(StepId, String)>,
    /// Which of them are claimed for the caller at once (see `StepChain`).
    pub chain: Option<ChainPlan>,
    /// Running tasks to complete along [`settle::COMPLETE_FROM_RUNNING`].
    pub complete: Vec<TaskId>,
    /// Tasks to announce on `evaluate_queue` unless a step of theirs is `Enqueued` or
    /// `InProgress`, each with its message.
    pub evaluate_if_idle: Vec<(TaskId, serde_json::Value)>,
    /// The queue of the evaluator's messages.
    pub evaluate_queue: &'a str,
    /// Audit rows to write whatever happens (the moved steps').
    pub transitions: Vec<NewTransition<'a>>,
    /// Messages to publish whatever happens.
    pub outbox: Outbox,
    /// Deliveries to delete, each only while its lease token is current.
    pub consumed: &'a [QueueAckParams],
    /// Instance recorded in the audit rows.
    pub instance_id: &'a str,
}

/// The children of [`EffectsPlan::enqueue`] claimed at once, and their lease.
#[derive(Debug, Clone)]
pub struct ChainPlan {
    /// The children, in id order.
    pub steps: Vec<StepId>,
    /// The lease, in milliseconds.
    pub lease_ms: i64,
    /// The claim's token (each step's lease token adds its id).
    pub token: String,
}

/// What [`Backend::apply_effects`] did.
#[derive(Debug, Clone, Default)]
pub struct EffectsApplied {
    /// The tasks it completed.
    pub finished: Vec<TaskRow>,
    /// The queues that received messages or steps.
    pub queues: Vec<String>,
    /// The children claimed at once, with their handlers' input.
    pub claimed: Vec<tasker_store::StepClaimed>,
}

/// `StepStore::step_apply_results`.
pub(super) async fn apply_results<B: Backend>(
    store: &SqlStore<B>,
    params: &StepApplyResultsParams,
) -> Result<ResultsApplied> {
    let mut order: Vec<&StepResultApply> = params.results.iter().collect();
    order.sort_by_key(|r| (r.task_id.0, r.step_id.0));
    order.dedup_by_key(|r| r.step_id);
    let moves = order
        .iter()
        .map(|r| {
            Ok(StepMove {
                task_id: r.task_id,
                step_id: r.step_id,
                attempt: i64::from(r.attempt),
                to: StepState::InProgress.transition(r.event)?,
                output: r.output.as_ref(),
                error: r.error.as_deref(),
                backoff_ms: r.backoff.map(duration_ms),
                lease_token: r.lease_token.as_deref(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut tx = store.backend().begin_write().await?;
    if let Some(wait) = params.lock_wait {
        B::limit_lock_wait(&mut tx, wait).await?;
    }
    let mut counted = B::move_steps(&mut tx, &moves).await?;
    counted
        .moved
        .sort_unstable_by_key(|s| (s.task_id.0, s.id.0));

    // Stale results and duplicates moved nothing: whoever moved their step settled its task
    // then.
    let moved: HashSet<StepId> = counted.moved.iter().map(|s| s.id).collect();
    let mut settled: Vec<settle::Moved> = Vec::with_capacity(moved.len());
    let mut transitions: Vec<NewTransition<'_>> = Vec::with_capacity(moved.len());
    for (r, m) in order.iter().zip(&moves) {
        if !moved.contains(&m.step_id) {
            continue;
        }
        transitions.push(NewTransition {
            entity: Entity::Step,
            task_id: m.task_id,
            step_id: Some(m.step_id),
            from_state: Some(StepState::InProgress.as_str()),
            to_state: m.to.as_str(),
            event: r.event.name(),
            reason: m.error,
            instance_id: &params.instance_id,
        });
        settled.push(settle::Moved {
            task_id: m.task_id,
            step_id: m.step_id,
            to: m.to,
        });
    }
    let mut applied = ResultsApplied {
        steps: std::mem::take(&mut counted.moved),
        ..ResultsApplied::default()
    };
    if settled.is_empty() {
        delete_consumed::<B>(&mut tx, &params.consumed).await?;
        commit::<B>(tx).await?;
        return Ok(applied);
    }

    // Mapped steps that expanded make their instances; instances that moved start the next
    // ones in their map's free slots, or complete it.
    let mut map_queues: Vec<String> = Vec::new();
    for r in &order {
        if r.event != StepEvent::Expand || !moved.contains(&r.step_id) {
            continue;
        }
        let Some(mapped) = applied.steps.iter().find(|s| s.id == r.step_id) else {
            continue;
        };
        let namespace = counted
            .namespaces
            .get(&mapped.task_id)
            .cloned()
            .unwrap_or_default();
        let queue = params.routing.queue(&namespace, &mapped.handler);
        let (count, started) = expand_map::<B>(
            &mut tx,
            mapped,
            &r.instances,
            queue,
            &mut transitions,
            &params.instance_id,
        )
        .await?;
        set_task_count(&mut counted, count);
        if started {
            map_queues.push(queue.to_owned());
        }
    }
    let maps: BTreeSet<StepId> = applied
        .steps
        .iter()
        .filter_map(|s| s.map_instance.as_ref().map(|m| m.of))
        .collect();
    for of in maps {
        let progress = progress_map::<B>(
            &mut tx,
            of,
            Some(&params.routing),
            &mut counted,
            &mut transitions,
            &params.instance_id,
        )
        .await?;
        map_queues.extend(progress.queue);
        if let Some(done) = progress.completed {
            settled.push(settle::Moved {
                task_id: done.task_id,
                step_id: done.id,
                to: done.state,
            });
            applied.steps.push(done);
        }
    }
    map_queues.sort_unstable();
    map_queues.dedup();
    for queue in &map_queues {
        B::announce_enqueued(&mut tx, queue).await?;
    }

    // A decision's left-out children lose the choice its move counted.
    let decisions: Vec<(StepId, &[String])> = order
        .iter()
        .filter(|r| {
            r.event == StepEvent::Complete && !r.unchosen.is_empty() && moved.contains(&r.step_id)
        })
        .map(|r| (r.step_id, r.unchosen.as_slice()))
        .collect();
    if !decisions.is_empty() {
        for row in unchoose::<B>(&mut tx, &decisions).await? {
            if let Some(child) = counted.children.iter_mut().find(|c| c.id == row.id) {
                *child = row;
            }
        }
    }

    // Settlement decides; the store applies.
    let mut effects = settle::settle(&settled, &counted.tasks, &counted.children);
    if !effects.skip.is_empty() {
        let skipped;
        (effects, skipped) = skip_rounds::<B>(
            &mut tx,
            effects,
            &mut settled,
            &mut counted,
            &mut transitions,
            &params.instance_id,
        )
        .await?;
        applied.steps.extend(skipped);
    }
    let children: HashMap<StepId, &StepRow> = counted.children.iter().map(|c| (c.id, c)).collect();
    let enqueue = effects
        .enqueue
        .iter()
        .map(|id| {
            let child = children
                .get(id)
                .ok_or_else(|| corrupt("settlement", format!("unknown child {id}")))?;
            let namespace = counted
                .namespaces
                .get(&child.task_id)
                .map_or("", String::as_str);
            Ok((
                *id,
                params
                    .routing
                    .queue_of(namespace, &child.handler, settle::is_mapped(child))
                    .to_owned(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut outbox = Outbox::new();
    for task_id in effects.evaluate {
        outbox
            .entry(params.evaluate_queue.clone())
            .or_default()
            .push(serde_json::json!(TaskMessage { task_id }));
    }
    // Settlement chose the children; the caller's queue takes the first ones at once.
    let chain = params.chain.as_ref().and_then(|chain| {
        let mut steps: Vec<StepId> = enqueue
            .iter()
            .filter(|(_, queue)| *queue == chain.queue)
            .map(|(id, _)| *id)
            .collect();
        steps.sort_unstable_by_key(|id| id.0);
        steps.truncate(usize::try_from(chain.max).unwrap_or(usize::MAX));
        (!steps.is_empty()).then(|| ChainPlan {
            steps,
            lease_ms: duration_ms(chain.lease),
            token: uuid::Uuid::new_v4().to_string(),
        })
    });
    let plan = EffectsPlan {
        enqueue,
        chain,
        complete: effects.complete,
        evaluate_if_idle: effects
            .evaluate_if_idle
            .into_iter()
            .map(|task_id| (task_id, serde_json::json!(TaskMessage { task_id })))
            .collect(),
        evaluate_queue: &params.evaluate_queue,
        transitions,
        outbox,
        consumed: &params.consumed,
        instance_id: &params.instance_id,
    };
    let done = B::apply_effects(&mut tx, plan).await?;
    commit::<B>(tx).await?;
    applied.finished = done.finished;
    applied.queues = done.queues;
    for queue in map_queues {
        if !applied.queues.contains(&queue) {
            applied.queues.push(queue);
        }
    }
    applied.claimed = done.claimed;
    Ok(applied)
}

/// Replaces `counted`'s count of `count`'s task, or adds it.
fn set_task_count(counted: &mut Counted, count: settle::TaskCount) {
    match counted
        .tasks
        .iter_mut()
        .find(|t| t.task_id == count.task_id)
    {
        Some(known) => *known = count,
        None => counted.tasks.push(count),
    }
}

/// Creates the instances of `mapped`, which just moved to `Mapped`, one per input: those in its
/// first slots `Enqueued` in `queue`, the rest `Pending` waiting for a slot; counts them on its
/// task. Returns the task's count and whether any instance was enqueued.
async fn expand_map<'a, B: Backend>(
    conn: &mut Conn<B>,
    mapped: &StepRow,
    inputs: &[serde_json::Value],
    queue: &str,
    transitions: &mut Vec<NewTransition<'a>>,
    instance_id: &'a str,
) -> Result<(settle::TaskCount, bool)> {
    let spec = mapped
        .map
        .as_ref()
        .ok_or_else(|| corrupt("map", format!("step {} expanded without a map", mapped.id)))?;
    let first = settle::first_slots(spec, inputs.len());
    let enqueue = StepState::Pending.transition(StepEvent::Enqueue)?;
    let names: Vec<String> = (0..inputs.len())
        .map(|index| format!("{}[{index}]", mapped.name))
        .collect();
    let rows: Vec<(usize, &serde_json::Value)> = inputs.iter().enumerate().collect();
    for chunk in rows.chunks(INSERT_CHUNK / 8) {
        let mut sql = Sql::new(format!(
            "INSERT INTO steps (task_id, position, name, handler, handler_config, state, \
               max_attempts, retry_base_ms, retry_max_ms, retry_jitter, timeout_ms, \
               pending_parents, map, map_of, map_index, map_input, queue, visible_at_ms) \
             SELECT m.task_id, m.position, v.column1, m.handler, m.handler_config, v.column2, \
               m.max_attempts, m.retry_base_ms, m.retry_max_ms, m.retry_jitter, m.timeout_ms, \
               v.column3, m.map, m.id, v.column4, v.column5, v.column6, \
               CASE WHEN v.column6 IS NULL THEN NULL ELSE {} END \
             FROM steps m, (",
            B::NOW_MS
        ));
        sql.push_values(chunk, |b, &(index, input)| {
            let started = index < first;
            let name = names[index].as_str();
            let index = i64::try_from(index).unwrap_or(i64::MAX);
            b.bind(name)
                .bind(if started { enqueue } else { StepState::Pending }.as_str())
                .bind(i64::from(!started))
                .bind(index)
                .bind(input)
                .bind(started.then_some(queue));
        });
        sql.push(") AS v WHERE m.id = ")
            .push_bind(mapped.id.0)
            .push(" RETURNING id, state");
        for row in B::fetch_all(conn, &sql).await? {
            let step_id = Some(StepId(row.int("id")?));
            let state: StepState = row
                .text("state")?
                .parse()
                .map_err(|e| corrupt("step state", e))?;
            let mut moves = vec![(None, StepState::Pending, "create")];
            if state == enqueue {
                moves.push((
                    Some(StepState::Pending.as_str()),
                    enqueue,
                    StepEvent::Enqueue.name(),
                ));
            }
            for (from, to, event) in moves {
                transitions.push(NewTransition {
                    entity: Entity::Step,
                    task_id: mapped.task_id,
                    step_id,
                    from_state: from,
                    to_state: to.as_str(),
                    event,
                    reason: None,
                    instance_id,
                });
            }
        }
    }
    let count = count_task::<B>(
        conn,
        mapped.task_id,
        i64::try_from(inputs.len()).unwrap_or(i64::MAX),
    )
    .await?;
    Ok((count, first > 0))
}

/// Adds `more` to the unfinished steps of `task` (subtracts when negative); returns its count.
async fn count_task<B: Backend>(
    conn: &mut Conn<B>,
    task: TaskId,
    more: i64,
) -> Result<settle::TaskCount> {
    let mut sql = Sql::new("UPDATE tasks SET unfinished_steps = unfinished_steps + ");
    sql.push_bind(more)
        .push(" WHERE id = ")
        .push_bind(task.0)
        .push(" RETURNING id, state, unfinished_steps");
    let row = B::fetch_all(conn, &sql)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| corrupt("task", format!("task {task} of a moved step is gone")))?;
    Ok(settle::TaskCount {
        task_id: task,
        state: row
            .text("state")?
            .parse()
            .map_err(|e| corrupt("task state", e))?,
        unfinished_steps: row.int("unfinished_steps")?,
    })
}

/// What moving some instances did to their map.
#[derive(Debug, Default)]
struct MapMoved {
    /// The queue of the instances it started, if any.
    queue: Option<String>,
    /// The mapped step, when it completed.
    completed: Option<StepRow>,
}

/// [`progress_map`] outside a result batch (an operator resolved an instance): completes the
/// mapped step `of` if that was its last instance. Starts none: a finished instance freed its
/// slot when it failed.
pub(super) async fn settle_map<'a, B: Backend>(
    conn: &mut Conn<B>,
    of: StepId,
    transitions: &mut Vec<NewTransition<'a>>,
    instance_id: &'a str,
) -> Result<()> {
    progress_map::<B>(
        conn,
        of,
        None,
        &mut Counted::default(),
        transitions,
        instance_id,
    )
    .await?;
    Ok(())
}

/// Reads the mapped step `of` with its instances and applies `settle::map_progress`: starts
/// the instances its free slots allow (when `routing` says where they wait), and completes it
/// with its output once they have all finished, counting it on its task and children like any
/// completed step (into `counted`).
async fn progress_map<'a, B: Backend>(
    conn: &mut Conn<B>,
    of: StepId,
    routing: Option<&tasker_store::StepRouting>,
    counted: &mut Counted,
    transitions: &mut Vec<NewTransition<'a>>,
    instance_id: &'a str,
) -> Result<MapMoved> {
    let mut sql = Sql::new(format!("SELECT {STEP_COLUMNS} FROM steps WHERE id = "));
    sql.push_bind(of.0).push(" OR map_of = ").push_bind(of.0);
    let mut instances = Vec::new();
    let mut mapped = None;
    for row in B::fetch_all(conn, &sql).await? {
        let step = decode_step(&row)?;
        if step.id == of {
            mapped = Some(step);
        } else {
            instances.push(step);
        }
    }
    let Some(mapped) = mapped else {
        return Ok(MapMoved::default());
    };
    let progress = settle::map_progress(&mapped, &instances);
    let mut moved = MapMoved::default();
    if let (false, Some(routing)) = (progress.start.is_empty(), routing) {
        let namespace = counted
            .namespaces
            .get(&mapped.task_id)
            .map_or("", String::as_str);
        let queue = routing.queue(namespace, &mapped.handler).to_owned();
        let to = StepState::Pending.transition(StepEvent::Enqueue)?;
        let mut sql = Sql::new("UPDATE steps SET state = ");
        sql.push_bind(to.as_str())
            .push(", pending_parents = 0, lease_token = NULL, queue = ")
            .push_bind(queue.as_str())
            .push(&format!(", visible_at_ms = {} WHERE state = ", B::NOW_MS))
            .push_bind(StepState::Pending.as_str())
            .push(" AND id IN (")
            .push_list(progress.start.iter().map(|id| id.0))
            .push(") RETURNING id");
        for row in B::fetch_all(conn, &sql).await? {
            transitions.push(NewTransition {
                entity: Entity::Step,
                task_id: mapped.task_id,
                step_id: Some(StepId(row.int("id")?)),
                from_state: Some(StepState::Pending.as_str()),
                to_state: to.as_str(),
                event: StepEvent::Enqueue.name(),
                reason: None,
                instance_id,
            });
            moved.queue = Some(queue.clone());
        }
    }
    let Some(output) = progress.output else {
        return Ok(moved);
    };
    let to = StepState::Mapped.transition(StepEvent::Gather)?;
    let mut sql = Sql::new("UPDATE steps SET state = ");
    sql.push_bind(to.as_str())
        .push(", result = ")
        .push_bind(&output)
        .push(&format!(", finished_at_ms = {} WHERE state = ", B::NOW_MS))
        .push_bind(StepState::Mapped.as_str())
        .push(" AND id = ")
        .push_bind(of.0)
        .push(&format!(" RETURNING {STEP_COLUMNS}"));
    let Some(row) = B::fetch_all(conn, &sql).await?.into_iter().next() else {
        return Ok(moved);
    };
    let done = decode_step(&row)?;
    // Failed instances that do not hold the map back are done for the task now.
    let tolerated = instances
        .iter()
        .filter(|i| settle::is_tolerated_failure(i))
        .count();
    if tolerated > 0 {
        let count =
            count_task::<B>(conn, mapped.task_id, -i64::try_from(tolerated).unwrap_or(0)).await?;
        set_task_count(counted, count);
    }
    transitions.push(NewTransition {
        entity: Entity::Step,
        task_id: done.task_id,
        step_id: Some(done.id),
        from_state: Some(StepState::Mapped.as_str()),
        to_state: to.as_str(),
        event: StepEvent::Gather.name(),
        reason: None,
        instance_id,
    });
    let mut gathered = Counted {
        moved: vec![done.clone()],
        ..Counted::default()
    };
    count_finished::<B>(conn, &mut gathered).await?;
    for count in gathered.tasks {
        set_task_count(counted, count);
    }
    counted.namespaces.extend(gathered.namespaces);
    counted.children.extend(gathered.children);
    moved.completed = Some(done);
    Ok(moved)
}

/// Applies `effects.skip`, and settles again with the skipped steps counted, until a round
/// skips nothing: a skip travels down a branch in one transaction. Keeps `settled`, `counted`
/// and `transitions` up to date; returns the last round's effects and the skipped steps.
async fn skip_rounds<'a, B: Backend>(
    tx: &mut Conn<B>,
    mut effects: settle::Effects,
    settled: &mut Vec<settle::Moved>,
    counted: &mut Counted,
    transitions: &mut Vec<NewTransition<'a>>,
    instance_id: &'a str,
) -> Result<(settle::Effects, Vec<StepRow>)> {
    let mut tasks: BTreeMap<TaskId, settle::TaskCount> =
        counted.tasks.iter().map(|t| (t.task_id, *t)).collect();
    let mut children: BTreeMap<StepId, StepRow> = std::mem::take(&mut counted.children)
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let mut skipped = Vec::new();
    while !effects.skip.is_empty() {
        let round = skip_steps::<B>(tx, &effects.skip).await?;
        for id in &effects.skip {
            // One that is no longer `Pending` moved elsewhere: settlement forgets it.
            if !round.moved.iter().any(|s| s.id == *id) {
                children.remove(id);
            }
        }
        for step in &round.moved {
            transitions.push(NewTransition {
                entity: Entity::Step,
                task_id: step.task_id,
                step_id: Some(step.id),
                from_state: Some(StepState::Pending.as_str()),
                to_state: step.state.as_str(),
                event: StepEvent::Skip.name(),
                reason: None,
                instance_id,
            });
            settled.push(settle::Moved {
                task_id: step.task_id,
                step_id: step.id,
                to: step.state,
            });
            children.insert(step.id, step.clone());
        }
        tasks.extend(round.tasks.into_iter().map(|t| (t.task_id, t)));
        counted.namespaces.extend(round.namespaces);
        children.extend(round.children.into_iter().map(|c| (c.id, c)));
        skipped.extend(round.moved);
        let task_counts: Vec<settle::TaskCount> = tasks.values().copied().collect();
        let rows: Vec<StepRow> = children.values().cloned().collect();
        effects = settle::settle(settled, &task_counts, &rows);
    }
    counted.tasks = tasks.into_values().collect();
    counted.children = children.into_values().collect();
    Ok((effects, skipped))
}

/// [`Backend::move_steps`] as portable statements: lock the tasks, move the steps, count the
/// finished ones on their tasks, then on their children.
pub async fn move_steps<B: Backend>(conn: &mut Conn<B>, moves: &[StepMove<'_>]) -> Result<Counted> {
    let mut task_ids: Vec<i64> = moves.iter().map(|m| m.task_id.0).collect();
    task_ids.sort_unstable();
    task_ids.dedup();
    B::lock_tasks(conn, &task_ids).await?;

    // 1. Each step moves, only while it runs the result's attempt.
    let mut counted = Counted::default();
    for chunk in moves.chunks(INSERT_CHUNK / 8) {
        let mut sql = Sql::new(format!(
            "UPDATE steps SET state = v.column3, result = COALESCE(v.column4, result), \
             last_error = COALESCE(v.column5, last_error), next_attempt_at_ms = CASE \
             WHEN v.column6 IS NULL THEN NULL ELSE {now} + v.column6 END, \
             finished_at_ms = CASE WHEN v.column7 THEN {now} ELSE NULL END FROM (",
            now = B::NOW_MS
        ));
        sql.push_values(chunk, |b, m| {
            b.bind(m.step_id.0)
                .bind(m.attempt)
                .bind(m.to.as_str())
                .bind(m.output)
                .bind(m.error)
                .bind(m.backoff_ms)
                .bind(m.to.is_terminal())
                .bind(m.lease_token);
        });
        sql.push(&format!(
            ") AS v WHERE steps.id = v.column1 AND steps.state = 'InProgress' \
             AND steps.attempts = v.column2 \
             AND (v.column8 IS NULL OR steps.lease_token = v.column8) RETURNING {}",
            qualified("steps", STEP_COLUMNS)
        ));
        for row in B::fetch_all(conn, &sql).await? {
            counted.moved.push(decode_step(&row)?);
        }
    }
    if counted.moved.is_empty() {
        return Ok(counted);
    }
    count_finished::<B>(conn, &mut counted).await?;
    Ok(counted)
}

/// Moves `ids` from `Pending` to `Skipped` (those still `Pending`), and counts them finished
/// on their tasks and their children, as not choosing them: what [`settle::Effects::skip`]
/// asks. Skips are rare, so every backend uses these portable statements.
pub(super) async fn skip_steps<B: Backend>(conn: &mut Conn<B>, ids: &[StepId]) -> Result<Counted> {
    let to = StepState::Pending.transition(StepEvent::Skip)?;
    let mut counted = Counted::default();
    for chunk in ids.chunks(INSERT_CHUNK) {
        let mut sql = Sql::new("UPDATE steps SET state = ");
        sql.push_bind(to.as_str())
            .push(&format!(", finished_at_ms = {} WHERE state = ", B::NOW_MS))
            .push_bind(StepState::Pending.as_str())
            .push(" AND id IN (")
            .push_list(chunk.iter().map(|id| id.0))
            .push(&format!(") RETURNING {STEP_COLUMNS}"));
        for row in B::fetch_all(conn, &sql).await? {
            counted.moved.push(decode_step(&row)?);
        }
    }
    if !counted.moved.is_empty() {
        count_finished::<B>(conn, &mut counted).await?;
    }
    Ok(counted)
}

/// The children a decision left out count it finished but not choosing them: each loses
/// the choice the move counted. Returns the children as they now are.
async fn unchoose<B: Backend>(
    conn: &mut Conn<B>,
    decisions: &[(StepId, &[String])],
) -> Result<Vec<StepRow>> {
    let mut children = Vec::new();
    for (decision, names) in decisions {
        let mut sql = Sql::new(
            "UPDATE steps SET live_parents = live_parents - 1 \
             WHERE id IN (SELECT child_id FROM step_edges WHERE parent_id = ",
        );
        sql.push_bind(decision.0)
            .push(") AND name IN (")
            .push_list(names.iter().map(String::as_str))
            .push(&format!(") RETURNING {STEP_COLUMNS}"));
        for row in B::fetch_all(conn, &sql).await? {
            children.push(decode_step(&row)?);
        }
    }
    Ok(children)
}

/// Counts `counted.moved`'s steps that released their dependents on their tasks, then on their
/// children, each of which a satisfied parent chooses; fills in `counted`'s tasks and children.
async fn count_finished<B: Backend>(conn: &mut Conn<B>, counted: &mut Counted) -> Result<()> {
    // 2. Their tasks count the finished steps...
    let mut done_per_task: BTreeMap<i64, i64> = BTreeMap::new();
    let mut finished: Vec<(i64, bool)> = Vec::new();
    for step in &counted.moved {
        let done = done_per_task.entry(step.task_id.0).or_default();
        if step.state.releases_dependents() {
            *done += 1;
            finished.push((step.id.0, step.state.satisfies_dependents()));
        }
    }
    let mut sql = Sql::new(format!(
        "UPDATE tasks SET updated_at_ms = {}, \
         unfinished_steps = unfinished_steps - v.column2 FROM (",
        B::NOW_MS
    ));
    sql.push_values(&done_per_task, |b, (task, done)| {
        b.bind(*task).bind(*done);
    });
    sql.push(
        ") AS v WHERE tasks.id = v.column1 \
         RETURNING tasks.id, tasks.state, tasks.namespace, tasks.unfinished_steps",
    );
    for row in B::fetch_all(conn, &sql).await? {
        let task_id = TaskId(row.int("id")?);
        counted.tasks.push(settle::TaskCount {
            task_id,
            state: row
                .text("state")?
                .parse()
                .map_err(|e| corrupt("task state", e))?,
            unfinished_steps: row.int("unfinished_steps")?,
        });
        counted.namespaces.insert(task_id, row.text("namespace")?);
    }

    // 3. ...and the children of the finished steps count their finished parents, and the
    // satisfied ones as choosing them.
    let mut by_kind: BTreeMap<bool, Vec<i64>> = BTreeMap::new();
    for (id, satisfied) in finished {
        by_kind.entry(satisfied).or_default().push(id);
    }
    for (satisfied, ids) in by_kind {
        let live = if satisfied {
            ", live_parents = live_parents + c.n"
        } else {
            ""
        };
        for chunk in ids.chunks(INSERT_CHUNK) {
            let mut sql = Sql::new(format!(
                "UPDATE steps SET pending_parents = pending_parents - c.n{live} \
                 FROM (SELECT child_id, COUNT(*) AS n FROM step_edges WHERE parent_id IN ("
            ));
            sql.push_list(chunk.iter().copied()).push(&format!(
                ") GROUP BY child_id) AS c WHERE steps.id = c.child_id RETURNING {}",
                qualified("steps", STEP_COLUMNS)
            ));
            for row in B::fetch_all(conn, &sql).await? {
                counted.children.push(decode_step(&row)?);
            }
        }
    }
    Ok(())
}

/// [`Backend::apply_effects`] as portable statements: enqueue the children, check which idle
/// tasks are idle, complete the tasks, then write the audit rows and messages with
/// [`Backend::write_effects`].
pub async fn apply_effects<B: Backend>(
    conn: &mut Conn<B>,
    mut plan: EffectsPlan<'_>,
) -> Result<EffectsApplied> {
    let mut transitions = std::mem::take(&mut plan.transitions);
    let mut outbox = std::mem::take(&mut plan.outbox);
    let mut applied = EffectsApplied::default();

    let to = StepState::Pending.transition(StepEvent::Enqueue)?;
    let chained: HashSet<StepId> = plan
        .chain
        .as_ref()
        .map(|c| c.steps.iter().copied().collect())
        .unwrap_or_default();
    let mut by_queue: BTreeMap<(&str, bool), Vec<i64>> = BTreeMap::new();
    for (id, queue) in &plan.enqueue {
        by_queue
            .entry((queue, chained.contains(id)))
            .or_default()
            .push(id.0);
    }
    let mut step_queues: Vec<String> = Vec::new();
    let mut enqueued_rows: Vec<(i64, i64, bool)> = Vec::new();
    for ((queue, chain), ids) in by_queue {
        let mut enqueued = 0;
        for chunk in ids.chunks(INSERT_CHUNK) {
            let mut sql = Sql::new("UPDATE steps SET queue = ");
            sql.push_bind(queue);
            match &plan.chain {
                // Claimed at once: as `step_claim` leases and starts a step.
                Some(c) if chain => {
                    let token = sql.placeholder(c.token.as_str());
                    sql.push(", state = ")
                        .push_bind(StepState::InProgress.as_str())
                        .push(", lease_token = ")
                        .push(&super::step_token_sql(&token))
                        .push(", lease_holder = ")
                        .push_bind(plan.instance_id)
                        .push(&format!(", visible_at_ms = {} + ", B::NOW_MS))
                        .push_bind(c.lease_ms)
                        .push(&format!(
                            ", attempts = attempts + 1, \
                             started_at_ms = COALESCE(started_at_ms, {now}), \
                             next_attempt_at_ms = NULL",
                            now = B::NOW_MS
                        ));
                }
                _ => {
                    sql.push(", state = ").push_bind(to.as_str()).push(&format!(
                        ", visible_at_ms = {}, lease_token = NULL",
                        B::NOW_MS
                    ));
                }
            }
            sql.push(" WHERE state = ")
                .push_bind(StepState::Pending.as_str())
                .push(" AND id IN (")
                .push_list(chunk.iter().copied())
                .push(") RETURNING id, task_id");
            for row in B::fetch_all(conn, &sql).await? {
                enqueued += 1;
                enqueued_rows.push((row.int("id")?, row.int("task_id")?, chain));
            }
        }
        if enqueued > 0 && !chain {
            step_queues.push(queue.to_owned());
        }
    }
    // Audit rows in step order, whatever the queues; a claimed step's start after its enqueue.
    enqueued_rows.sort_unstable();
    let mut claimed_ids: Vec<i64> = Vec::new();
    for &(step, task, chain) in &enqueued_rows {
        let moves: &[(StepState, StepEvent)] = if chain {
            claimed_ids.push(step);
            &[
                (StepState::Pending, StepEvent::Enqueue),
                (StepState::Enqueued, StepEvent::Start),
            ]
        } else {
            &[(StepState::Pending, StepEvent::Enqueue)]
        };
        for &(from, event) in moves {
            transitions.push(NewTransition {
                entity: Entity::Step,
                task_id: TaskId(task),
                step_id: Some(StepId(step)),
                from_state: Some(from.as_str()),
                to_state: from.transition(event)?.as_str(),
                event: event.name(),
                reason: None,
                instance_id: plan.instance_id,
            });
        }
    }

    if !plan.evaluate_if_idle.is_empty() {
        // Literal states: exactly `steps_running_idx`'s predicate, so even a generic plan may
        // use that partial index.
        let mut sql = Sql::new(
            "SELECT DISTINCT task_id FROM steps \
             WHERE state IN ('Enqueued', 'InProgress') AND task_id IN (",
        );
        sql.push_list(plan.evaluate_if_idle.iter().map(|(t, _)| t.0))
            .push(")");
        let busy = B::fetch_all(conn, &sql)
            .await?
            .iter()
            .map(|r| r.int("task_id"))
            .collect::<Result<HashSet<_>>>()?;
        for (task_id, message) in &plan.evaluate_if_idle {
            if !busy.contains(&task_id.0) {
                outbox
                    .entry(plan.evaluate_queue.to_owned())
                    .or_default()
                    .push(message.clone());
            }
        }
    }

    if !plan.complete.is_empty() {
        let (from, _) = settle::COMPLETE_FROM_RUNNING[0];
        let (last_from, last_event) = settle::COMPLETE_FROM_RUNNING[1];
        let mut sql = Sql::new("UPDATE tasks SET state = ");
        sql.push_bind(last_from.transition(last_event)?.as_str())
            .push(&format!(
                ", updated_at_ms = {now}, finished_at_ms = {now} WHERE state = ",
                now = B::NOW_MS
            ))
            .push_bind(from.as_str())
            .push(" AND id IN (")
            .push_list(plan.complete.iter().map(|t| t.0))
            .push(&format!(") RETURNING {TASK_COLUMNS}"));
        for row in B::fetch_all(conn, &sql).await? {
            let done = decode_task(&row)?;
            for (from, event) in settle::COMPLETE_FROM_RUNNING {
                transitions.push(NewTransition {
                    entity: Entity::Task,
                    task_id: done.id,
                    step_id: None,
                    from_state: Some(from.as_str()),
                    to_state: from.transition(event)?.as_str(),
                    event: event.name(),
                    reason: None,
                    instance_id: plan.instance_id,
                });
            }
            applied.finished.push(done);
        }
    }

    B::write_effects(conn, &transitions, &outbox, plan.consumed, &step_queues).await?;
    if !claimed_ids.is_empty() {
        let rows = B::fetch_all(conn, &crate::claimed_input(&claimed_ids, &[])).await?;
        applied.claimed = crate::claimed_steps(&rows)?;
    }
    applied.queues = outbox.into_keys().chain(step_queues).collect();
    applied.queues.sort_unstable();
    applied.queues.dedup();
    Ok(applied)
}
