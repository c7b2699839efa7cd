//! `GET /v1/tasks/{id}/events`: a task's engine events as server-sent events, for the
//! dashboard and any other client that would rather listen than poll.
//!
//! The events are advisory, as the engine's own are: each says what changed (`step`: a step
//! reached a new state; `task`: the task finished), and a client re-reads the task for the
//! truth. A `lagged` event says some were missed, so re-read now. They come from this
//! instance's engine; with several instances, steps that another one settles show only on
//! the client's next read, so clients also re-read now and then.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::{Path, State},
    response::sse::{Event, KeepAlive, Sse},
};
use futures::{
    stream::{self, Stream},
    StreamExt,
};
use serde_json::json;
use tasker_orchestrator::EngineEvent;
use tasker_types::TaskId;
use tokio::sync::broadcast::{error::RecvError, Receiver};

use crate::{error::ApiError, parse_id, AppState};

/// How long one stream lives before the client reconnects (browsers do so on their own):
/// it bounds what a forgotten tab holds, and lets a draining server close its connections.
const STREAM_LIFE: Duration = Duration::from_secs(60);

/// The JSON of one event, or `None` for another task's.
fn event_for(task: TaskId, event: &EngineEvent) -> Option<Event> {
    let (kind, data) = match event {
        EngineEvent::StepFinished {
            task_id,
            name,
            state,
            attempts,
        } if *task_id == task => (
            "step",
            json!({"task_id": task_id, "step": name, "state": state, "attempts": attempts}),
        ),
        EngineEvent::TaskFinished { task_id, state } if *task_id == task => {
            ("task", json!({"task_id": task_id, "state": state}))
        }
        _ => return None,
    };
    Some(Event::default().event(kind).data(data.to_string()))
}

struct Listening {
    task: TaskId,
    events: Receiver<EngineEvent>,
    stopping: Option<tokio::sync::watch::Receiver<bool>>,
    until: tokio::time::Instant,
}

impl Listening {
    /// The next event of this task; `None` when the stream should end.
    async fn next(&mut self) -> Option<Event> {
        loop {
            let stop = async {
                match &mut self.stopping {
                    Some(s) => {
                        let _ = s.wait_for(|stopping| *stopping).await;
                    }
                    None => std::future::pending().await,
                }
            };
            let received = tokio::select! {
                r = self.events.recv() => r,
                () = tokio::time::sleep_until(self.until) => return None,
                () = stop => return None,
            };
            match received {
                Ok(event) => {
                    if let Some(e) = event_for(self.task, &event) {
                        return Some(e);
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    return Some(Event::default().event("lagged").data(missed.to_string()));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// `GET /v1/tasks/{id}/events`.
pub(crate) async fn task_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let task = TaskId(parse_id(&id, "task")?);
    // Subscribe before reading, so nothing between the read and the first event is lost.
    let events = state.engine.subscribe();
    state.engine.store().task_get(task).await?;
    let listening = Listening {
        task,
        events,
        stopping: state.config.stopping.clone(),
        until: tokio::time::Instant::now() + STREAM_LIFE,
    };
    let hello = Event::default()
        .event("ready")
        .data(task.0.to_string())
        .retry(Duration::from_secs(1));
    let stream = stream::once(async move { Ok(hello) })
        .chain(stream::unfold(listening, |mut l| async move {
            l.next().await.map(|e| (Ok(e), l))
        }));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
