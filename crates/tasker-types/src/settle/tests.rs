use proptest::prelude::*;

use super::*;

pub(crate) fn step(id: i64, state: StepState, pending_parents: u32) -> StepRow {
    StepRow {
        id: StepId(id),
        task_id: TaskId(1),
        name: format!("s{id}"),
        handler: "noop".into(),
        handler_config: serde_json::Value::Null,
        state,
        queue: None,
        attempts: 0,
        max_attempts: 3,
        retry_base_ms: 1,
        retry_max_ms: 1,
        retry_jitter: false,
        pending_parents,
        live_parents: 0,
        branches: None,
        map: None,
        map_instance: None,
        next_attempt_at_ms: None,
        timeout_ms: None,
        result: None,
        last_error: None,
        started_at_ms: None,
        finished_at_ms: None,
    }
}

fn retrying(id: i64, due: UnixMillis) -> StepRow {
    StepRow {
        next_attempt_at_ms: Some(due),
        ..step(id, StepState::WaitingForRetry, 0)
    }
}

#[test]
fn all_complete_or_resolved_completes() {
    let steps = [
        step(1, StepState::Complete, 0),
        step(2, StepState::ResolvedManually, 0),
    ];
    assert_eq!(verdict(&steps), Verdict::Complete);
}

#[test]
fn a_permanent_failure_blocks_while_others_run_then_fails() {
    let running = [
        step(1, StepState::Error, 0),
        step(2, StepState::InProgress, 0),
    ];
    assert_eq!(verdict(&running), Verdict::Block);
    let idle = [step(1, StepState::Error, 0), step(2, StepState::Pending, 0)];
    assert_eq!(verdict(&idle), Verdict::Fail);
}

#[test]
fn ready_steps_come_before_waiting() {
    let steps = [
        step(1, StepState::Complete, 0),
        step(2, StepState::Pending, 0),
        step(3, StepState::Enqueued, 0),
    ];
    assert_eq!(verdict(&steps), Verdict::Enqueue);
    let blocked = [
        step(1, StepState::Enqueued, 0),
        step(2, StepState::Pending, 1),
    ];
    assert_eq!(verdict(&blocked), Verdict::AwaitSteps);
}

#[test]
fn only_retries_left_waits_for_the_earliest() {
    let steps = [
        retrying(1, 500),
        retrying(2, 200),
        step(3, StepState::Pending, 1),
    ];
    assert_eq!(verdict(&steps), Verdict::AwaitRetry(200));
}

#[test]
fn viability_needs_no_pending_parent_attempts_left_and_a_due_retry() {
    assert!(is_viable(&step(1, StepState::Pending, 0), 0));
    assert!(!is_viable(&step(1, StepState::Pending, 1), 0));
    let spent = StepRow {
        attempts: 3,
        ..step(1, StepState::Pending, 0)
    };
    assert!(!is_viable(&spent, 0));
    assert!(is_viable(&retrying(1, 100), 100));
    assert!(!is_viable(&retrying(1, 100), 99));
    assert!(!is_viable(&step(1, StepState::Enqueued, 0), 0));
}

#[test]
fn a_failure_retries_only_while_attempts_remain_and_the_handler_allows() {
    let first = StepRow {
        attempts: 1,
        ..step(1, StepState::InProgress, 0)
    };
    let last = StepRow {
        attempts: 3,
        ..first.clone()
    };
    assert_eq!(
        failure_event(&first, true),
        StepEvent::Fail { will_retry: true }
    );
    assert_eq!(
        failure_event(&first, false),
        StepEvent::Fail { will_retry: false }
    );
    assert_eq!(
        failure_event(&last, true),
        StepEvent::Fail { will_retry: false }
    );
}

#[test]
fn children_of_a_task_that_is_not_running_wait_for_its_evaluator() {
    let moved = [Moved {
        task_id: TaskId(1),
        step_id: StepId(1),
        to: StepState::Complete,
    }];
    let children = [StepRow {
        live_parents: 1,
        ..step(2, StepState::Pending, 0)
    }];
    let blocked = [TaskCount {
        task_id: TaskId(1),
        state: TaskState::BlockedByFailures,
        unfinished_steps: 1,
    }];
    let effects = settle(&moved, &blocked, &children);
    assert!(effects.enqueue.is_empty());
    assert_eq!(effects.evaluate, [TaskId(1)]);
    let running = [TaskCount {
        state: TaskState::StepsInProcess,
        ..blocked[0]
    }];
    let effects = settle(&moved, &running, &children);
    assert_eq!(effects.enqueue, [StepId(2)]);
    assert!(effects.evaluate.is_empty() && effects.evaluate_if_idle.is_empty());
}

#[test]
fn a_finished_task_is_left_alone() {
    let moved = [Moved {
        task_id: TaskId(1),
        step_id: StepId(1),
        to: StepState::Complete,
    }];
    let cancelled = [TaskCount {
        task_id: TaskId(1),
        state: TaskState::Cancelled,
        unfinished_steps: 3,
    }];
    assert_eq!(settle(&moved, &cancelled, &[]), Effects::default());
}

#[test]
fn the_completion_path_is_accepted_by_the_task_machine() {
    let mut state = TaskState::StepsInProcess;
    for (from, event) in COMPLETE_FROM_RUNNING {
        assert_eq!(state, from);
        state = state.transition(event).expect("a valid completion path");
    }
    assert_eq!(state, TaskState::Complete);
}

/// How an attempt in the model ends.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Success,
    Retryable,
    Permanent,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => Just(Outcome::Success),
        2 => Just(Outcome::Retryable),
        1 => Just(Outcome::Permanent),
    ]
}

/// A task run in memory the way the engine runs it: the store's counters, [`settle`] after each
/// batch of results, [`verdict`] in the evaluator, and every move through the state machines.
/// Each step's parents are among the steps before it.
struct Model {
    task: TaskState,
    unfinished: i64,
    steps: Vec<StepRow>,
    parents: Vec<Vec<usize>>,
    children: Vec<Vec<usize>>,
    /// Per decision step, the children its output chooses.
    choices: Vec<Option<Vec<usize>>>,
}

impl Model {
    fn new(parents: Vec<Vec<usize>>, max_attempts: &[u32]) -> Self {
        let choices = vec![None; parents.len()];
        Self::with_decisions(parents, max_attempts, choices)
    }

    /// Steps `i` with `choices[i]` set are decisions that choose those children (their other
    /// children are left out).
    fn with_decisions(
        parents: Vec<Vec<usize>>,
        max_attempts: &[u32],
        choices: Vec<Option<Vec<usize>>>,
    ) -> Self {
        let mut children = vec![Vec::new(); parents.len()];
        for (child, ps) in parents.iter().enumerate() {
            for &p in ps {
                children[p].push(child);
            }
        }
        let steps = parents
            .iter()
            .zip(max_attempts)
            .zip(1..)
            .map(|((ps, &max), id)| StepRow {
                max_attempts: max,
                ..step(id, StepState::Pending, u32::try_from(ps.len()).unwrap())
            })
            .collect();
        let unfinished = i64::try_from(parents.len()).unwrap();
        Self {
            task: TaskState::Pending,
            unfinished,
            steps,
            parents,
            children,
            choices,
        }
    }

    /// Whether step `parent`, finished, chooses `child`.
    fn chooses(&self, parent: usize, child: usize) -> bool {
        self.choices[parent]
            .as_ref()
            .is_none_or(|chosen| chosen.contains(&child))
    }

    fn index(&self, id: StepId) -> usize {
        usize::try_from(id.0 - 1).unwrap()
    }

    fn move_task(&mut self, event: TaskEvent) {
        self.task = self
            .task
            .transition(event)
            .unwrap_or_else(|e| panic!("task machine refused: {e}"));
    }

    fn move_step(&mut self, i: usize, event: StepEvent) {
        let step = &mut self.steps[i];
        step.state = step
            .state
            .transition(event)
            .unwrap_or_else(|e| panic!("step machine refused: {e}"));
        match event {
            StepEvent::Start => step.attempts += 1,
            // Time in the model jumps to the next due retry, so the due time is never read.
            StepEvent::Fail { will_retry: true } => step.next_attempt_at_ms = Some(0),
            _ => {}
        }
    }

    /// The claimer: enqueue what is viable, then the task runs.
    fn claim(&mut self) {
        self.move_task(TaskEvent::BeginEnqueue);
        for i in 0..self.steps.len() {
            if is_viable(&self.steps[i], 0) {
                self.move_step(i, StepEvent::Enqueue);
            }
        }
        self.move_task(TaskEvent::StepsEnqueued);
    }

    /// The evaluator, as the task finalizer runs it.
    fn evaluate(&mut self) {
        if self.task.is_terminal() {
            return;
        }
        if self.task != TaskState::EvaluatingResults {
            self.move_task(TaskEvent::StepResultReceived);
        }
        let verdict = verdict(&self.steps);
        self.move_task(verdict.event());
        if verdict == Verdict::Enqueue {
            self.claim();
        }
        if verdict == Verdict::Complete {
            assert!(
                self.all_finished(),
                "evaluator completed an unfinished task"
            );
        }
    }

    fn all_finished(&self) -> bool {
        self.steps.iter().all(|s| s.state.releases_dependents())
    }

    /// Applies the results of the started steps `batch` like `step_apply_results` does:
    /// moves the steps, lowers the counters, settles, applies the effects.
    fn apply(&mut self, batch: &[(usize, Outcome)]) {
        let mut moved = Vec::new();
        let mut lowered = Vec::new();
        for &(i, outcome) in batch {
            let event = match outcome {
                Outcome::Success => StepEvent::Complete,
                Outcome::Retryable => failure_event(&self.steps[i], true),
                Outcome::Permanent => failure_event(&self.steps[i], false),
            };
            self.move_step(i, event);
            let to = self.steps[i].state;
            moved.push(Moved {
                task_id: TaskId(1),
                step_id: self.steps[i].id,
                to,
            });
            if to.satisfies_dependents() {
                self.unfinished -= 1;
                for c in self.children[i].clone() {
                    self.steps[c].pending_parents -= 1;
                    self.steps[c].live_parents += u32::from(self.chooses(i, c));
                    lowered.push(c);
                }
            }
        }
        // Rounds, as the store runs them: skipped children finish for their own children.
        let effects = loop {
            lowered.sort_unstable();
            lowered.dedup();
            let children: Vec<StepRow> = lowered.iter().map(|&c| self.steps[c].clone()).collect();
            let count = TaskCount {
                task_id: TaskId(1),
                state: self.task,
                unfinished_steps: self.unfinished,
            };
            let effects = settle(&moved, &[count], &children);
            if effects.skip.is_empty() {
                break effects;
            }
            for id in &effects.skip {
                let i = self.index(*id);
                assert!(
                    self.parents[i]
                        .iter()
                        .all(|&p| self.steps[p].state.releases_dependents()),
                    "skipped step {i} before its parents finished"
                );
                self.move_step(i, StepEvent::Skip);
                self.unfinished -= 1;
                moved.push(Moved {
                    task_id: TaskId(1),
                    step_id: *id,
                    to: StepState::Skipped,
                });
                for c in self.children[i].clone() {
                    self.steps[c].pending_parents -= 1;
                    lowered.push(c);
                }
            }
        };
        for id in &effects.enqueue {
            let i = self.index(*id);
            assert!(
                self.parents[i]
                    .iter()
                    .all(|&p| self.steps[p].state.releases_dependents()),
                "enqueued step {i} before its parents finished"
            );
            assert!(
                self.parents[i]
                    .iter()
                    .any(|&p| self.steps[p].state.satisfies_dependents() && self.chooses(p, i)),
                "enqueued step {i} that no parent chose"
            );
            self.move_step(i, StepEvent::Enqueue);
        }
        if !effects.complete.is_empty() {
            assert!(
                self.all_finished(),
                "completed a task with unfinished steps"
            );
            for (from, event) in COMPLETE_FROM_RUNNING {
                assert_eq!(self.task, from);
                self.move_task(event);
            }
        }
        let idle = !self
            .steps
            .iter()
            .any(|s| matches!(s.state, StepState::Enqueued | StepState::InProgress));
        if !effects.evaluate.is_empty() || (!effects.evaluate_if_idle.is_empty() && idle) {
            self.evaluate();
        }
    }
}

/// A DAG of 1..=8 steps (each step's parents among those before it), each step's attempts
/// allowed, and the outcomes its attempts will have.
fn workflow() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<u32>, Vec<Outcome>, Vec<usize>)> {
    (1_usize..=8)
        .prop_flat_map(|n| {
            let parents = (0..n)
                .map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(3)))
                .collect::<Vec<_>>();
            (
                parents,
                proptest::collection::vec(1_u32..=3, n),
                proptest::collection::vec(outcome(), 64),
                proptest::collection::vec(1_usize..=4, 64),
            )
        })
        .prop_map(|(p, m, o, b)| (p, m, o, b))
}

proptest! {
    /// Whatever the DAG and the outcomes, every move is one the state machines accept, no step
    /// runs before its parents finished, the task finishes (never stuck with nothing running),
    /// and it is Complete exactly when every step is.
    #[test]
    fn settlement_drives_any_workflow_to_a_correct_end(
        (parents, max_attempts, outcomes, batch_sizes) in workflow()
    ) {
        let mut model = Model::new(parents, &max_attempts);
        model.move_task(TaskEvent::Initialize);
        model.claim();
        let mut outcomes = outcomes.into_iter().cycle();
        let mut batch_sizes = batch_sizes.into_iter().cycle();
        for _round in 0..1_000 {
            if model.task.is_terminal() {
                break;
            }
            let enqueued: Vec<usize> = (0..model.steps.len())
                .filter(|&i| model.steps[i].state == StepState::Enqueued)
                .collect();
            if enqueued.is_empty() {
                // Nothing runs: only a due retry can move the task on.
                prop_assert_eq!(model.task, TaskState::WaitingForRetry, "stuck: {:?}", model.steps);
                model.claim();
                continue;
            }
            let take = batch_sizes.next().unwrap().min(enqueued.len());
            let batch: Vec<(usize, Outcome)> = enqueued[..take]
                .iter()
                .map(|&i| (i, outcomes.next().unwrap()))
                .collect();
            for &(i, _) in &batch {
                model.move_step(i, StepEvent::Start);
            }
            model.apply(&batch);
        }
        prop_assert!(model.task.is_terminal(), "never finished: {:?}", model.task);
        match model.task {
            TaskState::Complete => prop_assert!(model.all_finished()),
            TaskState::Error => prop_assert!(
                model.steps.iter().any(|s| s.state == StepState::Error)
            ),
            other => prop_assert!(false, "ended in {:?}", other),
        }
        prop_assert_eq!(
            model.unfinished,
            i64::try_from(model.steps.iter().filter(|s| !s.state.releases_dependents()).count()).unwrap()
        );
    }

    /// Whatever the DAG and the decisions' choices, with every attempt succeeding: the steps
    /// skipped are exactly those no chosen path reaches (a root is reached; a step is reached
    /// when a reached parent chooses it), every other step completes, and so does the task.
    #[test]
    fn skips_are_exactly_the_steps_no_chosen_branch_reaches(
        (parents, choices) in decisions()
    ) {
        let n = parents.len();
        let mut model = Model::with_decisions(parents.clone(), &vec![1; n], choices.clone());
        model.move_task(TaskEvent::Initialize);
        model.claim();
        for _round in 0..100 {
            let enqueued: Vec<usize> = (0..n)
                .filter(|&i| model.steps[i].state == StepState::Enqueued)
                .collect();
            if enqueued.is_empty() {
                break;
            }
            let batch: Vec<(usize, Outcome)> =
                enqueued.iter().map(|&i| (i, Outcome::Success)).collect();
            for &(i, _) in &batch {
                model.move_step(i, StepEvent::Start);
            }
            model.apply(&batch);
        }
        // Reachability, step by step in order (parents come first).
        let mut reached: Vec<bool> = Vec::with_capacity(n);
        for (i, ps) in parents.iter().enumerate() {
            let chosen = |p: usize| choices[p].as_ref().is_none_or(|c| c.contains(&i));
            reached.push(ps.is_empty() || ps.iter().any(|&p| reached[p] && chosen(p)));
        }
        for (i, (&live, st)) in reached.iter().zip(&model.steps).enumerate() {
            let expected = if live { StepState::Complete } else { StepState::Skipped };
            prop_assert_eq!(st.state, expected, "step {} of {:?} with choices {:?}", i, parents, choices);
        }
        prop_assert_eq!(model.task, TaskState::Complete);
        prop_assert_eq!(model.unfinished, 0);
    }
}

/// A DAG of 1..=10 steps and, for some steps with children, the children they choose as
/// decisions.
fn decisions() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<Option<Vec<usize>>>)> {
    (1_usize..=10)
        .prop_flat_map(|n| {
            let parents = (0..n)
                .map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i.min(3)))
                .collect::<Vec<_>>();
            (
                parents,
                proptest::collection::vec(any::<bool>(), n),
                proptest::collection::vec(any::<u16>(), n),
            )
        })
        .prop_map(|(parents, is_decision, masks)| {
            let choices = (0..parents.len())
                .map(|i| {
                    let children: Vec<usize> = (0..parents.len())
                        .filter(|&c| parents[c].contains(&i))
                        .collect();
                    (is_decision[i] && !children.is_empty()).then(|| {
                        children
                            .iter()
                            .enumerate()
                            .filter(|(k, _)| masks[i] >> k & 1 == 1)
                            .map(|(_, &c)| c)
                            .collect()
                    })
                })
                .collect();
            (parents, choices)
        })
}

#[test]
fn a_decision_chooses_among_its_children_and_names_a_bad_entry() {
    let branches = vec!["express".to_owned(), "standard".to_owned()];
    assert_eq!(
        unchosen(&branches, &serde_json::json!({"next": ["express"]})),
        Ok(vec!["standard".to_owned()])
    );
    assert_eq!(
        unchosen(&branches, &serde_json::json!({"next": []})),
        Ok(branches.clone())
    );
    assert_eq!(
        unchosen(
            &branches,
            &serde_json::json!({"next": ["standard", "express", "express"]})
        ),
        Ok(vec![])
    );
    let bad = unchosen(
        &branches,
        &serde_json::json!({"next": ["express", "overnight"]}),
    )
    .unwrap_err();
    assert!(
        bad.contains("\"overnight\"") && bad.contains("express, standard"),
        "{bad}"
    );
    let missing = unchosen(&branches, &serde_json::json!({"route": "express"})).unwrap_err();
    assert!(missing.contains("\"next\""), "{missing}");
    let not_a_list = unchosen(&branches, &serde_json::json!({"next": "express"})).unwrap_err();
    assert!(not_a_list.contains("list"), "{not_a_list}");
    let not_a_name = unchosen(&branches, &serde_json::json!({"next": [3]})).unwrap_err();
    assert!(not_a_name.contains("names 3"), "{not_a_name}");
}

#[test]
fn a_child_nobody_chose_is_skipped_and_its_task_completes() {
    let moved = [Moved {
        task_id: TaskId(1),
        step_id: StepId(1),
        to: StepState::Complete,
    }];
    let count = TaskCount {
        task_id: TaskId(1),
        state: TaskState::StepsInProcess,
        unfinished_steps: 1,
    };
    let chosen = StepRow {
        live_parents: 1,
        ..step(2, StepState::Pending, 0)
    };
    let left_out = step(3, StepState::Pending, 0);
    let effects = settle(&moved, &[count], &[chosen, left_out]);
    assert_eq!(effects.enqueue, vec![StepId(2)]);
    assert_eq!(effects.skip, vec![StepId(3)]);

    // The next round: the skipped step was the last unfinished one.
    let skipped = Moved {
        task_id: TaskId(1),
        step_id: StepId(3),
        to: StepState::Skipped,
    };
    let done = TaskCount {
        unfinished_steps: 0,
        ..count
    };
    let effects = settle(&[skipped], &[done], &[]);
    assert_eq!(effects.complete, vec![TaskId(1)]);
    assert!(effects.skip.is_empty());
}

#[test]
fn a_finished_task_skips_nothing() {
    let count = TaskCount {
        task_id: TaskId(1),
        state: TaskState::Error,
        unfinished_steps: 2,
    };
    let effects = settle(&[], &[count], &[step(3, StepState::Pending, 0)]);
    assert!(effects.skip.is_empty());
}
