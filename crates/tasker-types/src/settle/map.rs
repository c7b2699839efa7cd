//! Mapped steps: what a mapped step expands into, when its next instances start and when it
//! completes, with what output. The store reads a mapped step with its instances and applies
//! what these functions return.

use serde_json::Value;

use crate::{MapSpec, OnFailure, StepId, StepRow, StepState};

/// The inputs of a mapped step's instances, one per batch of `spec.batch_size` elements of the
/// array at `spec.over` in the task `context` or the step's `parents` (name, output): each
/// `{"item": element, "index": i}`, or `{"items": [..], "index": i}` for batches of more than
/// one.
///
/// # Errors
///
/// Why there is no such array, naming the path: nothing there, not an array, or more than
/// `spec.max_items` elements. The mapped step then fails permanently.
pub fn expand(
    spec: &MapSpec,
    context: &Value,
    parents: &[(String, Option<Value>)],
) -> Result<Vec<Value>, String> {
    let over = &spec.over;
    let mut keys = over.split('.');
    let (mut value, mut at) = match keys.next() {
        Some("context") => (Some(context), "context".to_owned()),
        Some("parents") => {
            let name = keys.next().unwrap_or_default();
            let output = parents
                .iter()
                .find(|(parent, _)| parent == name)
                .and_then(|(_, output)| output.as_ref());
            (output, format!("parents.{name}"))
        }
        _ => (None, String::new()),
    };
    for key in keys {
        if value.is_none() {
            break;
        }
        value = value.and_then(|v| match v {
            Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
            other => other.get(key),
        });
        at = format!("{at}.{key}");
    }
    let Some(value) = value else {
        return Err(format!(
            "map.over {over}: nothing at {}",
            if at.is_empty() { over } else { &at }
        ));
    };
    let Some(items) = value.as_array() else {
        return Err(format!(
            "map.over {over}: a {} is there, not an array",
            kind(value)
        ));
    };
    if items.len() > usize::try_from(spec.max_items).unwrap_or(usize::MAX) {
        return Err(format!(
            "map.over {over}: {} elements, more than map.max_items ({})",
            items.len(),
            spec.max_items
        ));
    }
    let size = usize::try_from(spec.batch_size.max(1)).unwrap_or(1);
    Ok(items
        .chunks(size)
        .enumerate()
        .map(|(index, batch)| match batch {
            [item] if size == 1 => serde_json::json!({"item": item, "index": index}),
            _ => serde_json::json!({"items": batch, "index": index}),
        })
        .collect())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A mapped step itself, not one of its instances: the engine expands it rather than run its
/// handler.
pub fn is_mapped(step: &StepRow) -> bool {
    step.map.is_some() && step.map_instance.is_none()
}

/// What a mapped step's instances moving means for it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MapProgress {
    /// Instances waiting for a slot to start now (`Pending`, held back by `max_parallel`), in
    /// index order.
    pub start: Vec<StepId>,
    /// The mapped step's output, once every instance has finished: it completes.
    pub output: Option<Value>,
}

/// An instance holds one of its map's `max_parallel` slots while it is queued, runs or waits
/// for a retry.
fn holds_a_slot(instance: &StepRow) -> bool {
    matches!(
        instance.state,
        StepState::Enqueued | StepState::InProgress | StepState::WaitingForRetry
    )
}

/// An instance left waiting for a slot when its map expanded (`pending_parents` counts the
/// slot it waits for).
fn waits_for_a_slot(instance: &StepRow) -> bool {
    instance.state == StepState::Pending && instance.pending_parents > 0
}

/// How many of `inputs` start at once when a mapped step expands; the rest wait for a slot.
pub fn first_slots(spec: &MapSpec, inputs: usize) -> usize {
    spec.max_parallel.map_or(inputs, |most| {
        inputs.min(usize::try_from(most).unwrap_or(usize::MAX))
    })
}

/// A failed instance that does not hold its map's children back (`on_failure: continue`): done
/// for its task once its map completes.
pub fn is_tolerated_failure(step: &StepRow) -> bool {
    step.state == StepState::Error
        && step.map_instance.is_some()
        && step
            .map
            .as_ref()
            .is_some_and(|m| m.on_failure == OnFailure::Continue)
}

/// Progress of the `Mapped` step `mapped` given all its `instances`: the waiting instances
/// that the free slots let start, and, once every instance has finished (complete or resolved;
/// with `on_failure: continue`, failed too), the step's output: the instances' outputs in
/// index order, a batch's output flattened when it is an array of one output per element, and
/// `null` for each element of a failed instance.
pub fn map_progress(mapped: &StepRow, instances: &[StepRow]) -> MapProgress {
    let Some(spec) = mapped.map.as_ref() else {
        return MapProgress::default();
    };
    if mapped.state != StepState::Mapped {
        return MapProgress::default();
    }
    let mut ordered: Vec<&StepRow> = instances.iter().collect();
    ordered.sort_by_key(|i| i.map_instance.as_ref().map_or(0, |m| m.index));
    let held = ordered.iter().filter(|i| holds_a_slot(i)).count();
    let free = first_slots(spec, ordered.len()).saturating_sub(held);
    let start = ordered
        .iter()
        .filter(|i| waits_for_a_slot(i))
        .take(free)
        .map(|i| i.id)
        .collect();
    let finished = ordered.iter().all(|i| {
        i.state.satisfies_dependents()
            || (spec.on_failure == OnFailure::Continue && i.state == StepState::Error)
    });
    let output = finished.then(|| {
        let mut out = Vec::new();
        for instance in &ordered {
            let batch = instance
                .map_instance
                .as_ref()
                .and_then(|m| m.input.get("items"))
                .and_then(Value::as_array)
                .map(Vec::len);
            match (instance.state.satisfies_dependents(), batch) {
                (true, None) => out.push(instance.result.clone().unwrap_or(Value::Null)),
                (true, Some(len)) => match &instance.result {
                    Some(Value::Array(each)) if each.len() == len => out.extend(each.clone()),
                    other => out.push(other.clone().unwrap_or(Value::Null)),
                },
                (false, batch) => out.extend(std::iter::repeat_n(Value::Null, batch.unwrap_or(1))),
            }
        }
        Value::Array(out)
    });
    MapProgress { start, output }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{MapInstance, TaskId};

    fn spec(over: &str) -> MapSpec {
        MapSpec {
            over: over.into(),
            batch_size: 1,
            max_parallel: None,
            on_failure: OnFailure::Fail,
            max_items: 10_000,
        }
    }

    #[test]
    fn expands_one_instance_per_batch_from_a_parent_or_the_context() {
        let parents = vec![("load".to_owned(), Some(json!({"items": [1, 2, 3]})))];
        assert_eq!(
            expand(&spec("parents.load.items"), &json!({}), &parents).unwrap(),
            [
                json!({"item": 1, "index": 0}),
                json!({"item": 2, "index": 1}),
                json!({"item": 3, "index": 2})
            ]
        );
        let batched = MapSpec {
            batch_size: 2,
            ..spec("context.order.lines")
        };
        let context = json!({"order": {"lines": ["a", "b", "c"]}});
        assert_eq!(
            expand(&batched, &context, &[]).unwrap(),
            [
                json!({"items": ["a", "b"], "index": 0}),
                json!({"items": ["c"], "index": 1})
            ]
        );
        assert_eq!(
            expand(&spec("context.rows.1"), &json!({"rows": [[], [7]]}), &[]).unwrap(),
            [json!({"item": 7, "index": 0})]
        );
        assert!(expand(&spec("context.none"), &json!({"none": []}), &[])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_missing_path_a_non_array_or_too_many_items_names_the_path() {
        let parents = vec![("load".to_owned(), Some(json!({"items": {"a": 1}})))];
        let missing = expand(&spec("parents.load.rows"), &json!({}), &parents).unwrap_err();
        assert_eq!(
            missing,
            "map.over parents.load.rows: nothing at parents.load.rows"
        );
        let absent = expand(&spec("parents.gone.items"), &json!({}), &parents).unwrap_err();
        assert!(absent.contains("nothing at parents.gone"), "{absent}");
        let object = expand(&spec("parents.load.items"), &json!({}), &parents).unwrap_err();
        assert_eq!(
            object,
            "map.over parents.load.items: a object is there, not an array"
        );
        let small = MapSpec {
            max_items: 2,
            ..spec("context.xs")
        };
        let many = expand(&small, &json!({"xs": [1, 2, 3]}), &[]).unwrap_err();
        assert!(
            many.contains("3 elements, more than map.max_items (2)"),
            "{many}"
        );
    }

    fn mapped(spec: MapSpec) -> StepRow {
        StepRow {
            state: StepState::Mapped,
            map: Some(spec),
            ..crate::settle::tests::step(1, StepState::Mapped, 0)
        }
    }

    fn instance(
        id: i64,
        index: u32,
        state: StepState,
        input: Value,
        result: Option<Value>,
    ) -> StepRow {
        StepRow {
            map_instance: Some(MapInstance {
                of: StepId(1),
                index,
                input,
            }),
            result,
            task_id: TaskId(1),
            ..crate::settle::tests::step(id, state, 0)
        }
    }

    #[test]
    fn slots_free_up_as_instances_finish_and_the_output_keeps_item_order() {
        let two = mapped(MapSpec {
            max_parallel: Some(2),
            ..spec("context.xs")
        });
        let waiting = |id, index| StepRow {
            pending_parents: 1,
            ..instance(
                id,
                index,
                StepState::Pending,
                json!({"item": index, "index": index}),
                None,
            )
        };
        let done = |id, index| {
            instance(
                id,
                index,
                StepState::Complete,
                json!({"item": index, "index": index}),
                Some(json!(index * 10)),
            )
        };
        let running = |id, index| {
            instance(
                id,
                index,
                StepState::InProgress,
                json!({"item": index, "index": index}),
                None,
            )
        };
        let progress = map_progress(
            &two,
            &[running(11, 1), done(10, 0), waiting(12, 2), waiting(13, 3)],
        );
        assert_eq!(progress.start, [StepId(12)]);
        assert_eq!(progress.output, None);
        let progress = map_progress(&two, &[done(13, 3), done(11, 1), done(10, 0), done(12, 2)]);
        assert!(progress.start.is_empty());
        assert_eq!(progress.output, Some(json!([0, 10, 20, 30])));
    }

    #[test]
    fn failures_hold_back_or_count_as_null_by_on_failure() {
        let failed = |spec: MapSpec| {
            let mut row = instance(
                11,
                1,
                StepState::Error,
                json!({"items": [3, 4], "index": 1}),
                None,
            );
            row.map = Some(spec);
            row
        };
        let ok = instance(
            10,
            0,
            StepState::Complete,
            json!({"items": [1, 2], "index": 0}),
            Some(json!(["a", "b"])),
        );
        let fail = MapSpec {
            batch_size: 2,
            ..spec("context.xs")
        };
        assert_eq!(
            map_progress(&mapped(fail.clone()), &[ok.clone(), failed(fail.clone())]).output,
            None
        );
        assert!(!is_tolerated_failure(&failed(fail.clone())));
        let cont = MapSpec {
            on_failure: OnFailure::Continue,
            ..fail
        };
        assert_eq!(
            map_progress(&mapped(cont.clone()), &[failed(cont.clone()), ok]).output,
            Some(json!(["a", "b", null, null]))
        );
        assert!(is_tolerated_failure(&failed(cont)));
    }
}
