//! `tasker run`: one task from a template file, on an embedded engine, to the end.

use std::{hash::BuildHasher, io::IsTerminal, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use tasker_orchestrator::{
    engine::handler_config_problems, handler::HandlerRegistry, pipeline::messages::TaskRequest,
    Engine, EngineConfig, EngineEvent,
};
use tasker_store::{Store, TemplateRegisterParams};
use tasker_template::TaskTemplate;
use tasker_types::{StepId, StepRow, TaskId, TaskRow, TaskState};

/// `tasker run` arguments.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The template file (YAML).
    template: PathBuf,
    /// The task context, as JSON.
    #[arg(long, default_value = "{}")]
    context: String,
    /// Database to run on; a temporary SQLite file when absent.
    #[arg(long, env = "TASKER_DATABASE_URL")]
    database_url: Option<String>,
    /// Print the final task as one JSON object on stdout (step lines go to stderr).
    #[arg(long)]
    json: bool,
    /// Give up after this long (e.g. `30s`, `5m`).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub(crate) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let template = match TaskTemplate::from_path(&args.template) {
        Ok(t) => t,
        Err(err) => {
            for line in err.problems_lines() {
                eprintln!("error: {line}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let handlers = HandlerRegistry::with_builtins();
    check_handlers(&template, &handlers)?;
    let context: Value =
        serde_json::from_str(&args.context).context("--context is not valid JSON")?;
    // `run` reads no configuration file: the OpenTelemetry variables decide.
    let endpoint = crate::telemetry::traces_endpoint("", |name| std::env::var(name).ok());
    let telemetry = crate::telemetry::Telemetry::init(endpoint.as_deref())?;
    if args.database_url.is_none() {
        // A fresh database numbers its tasks from 1 on every run: a seed of this process's
        // own keeps each run's trace apart from the last one's.
        tasker_orchestrator::telemetry::set_trace_seed(
            std::collections::hash_map::RandomState::new().hash_one(std::process::id()),
        );
    }
    let ran = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run_task(args, template, context, handlers));
    // After the engine stopped: every attempt's span has ended.
    telemetry.shutdown();
    ran
}

/// Fails naming every handler the template uses that `handlers` lacks, with the steps using
/// it: nothing in this process would ever run those steps, so the task could only wait out
/// `--timeout`.
fn check_handlers(template: &TaskTemplate, handlers: &HandlerRegistry) -> anyhow::Result<()> {
    // Missing handler names in order of first use, each with the steps that use it.
    let mut missing: Vec<(&str, Vec<&str>)> = Vec::new();
    for step in &template.steps {
        let handler = step.handler.name.as_str();
        if handlers.contains(handler) {
            continue;
        }
        match missing.iter_mut().find(|(name, _)| *name == handler) {
            Some((_, steps)) => steps.push(&step.name),
            None => missing.push((handler, vec![&step.name])),
        }
    }
    if missing.is_empty() {
        // The handlers are all here: their configs are checked as registration checks them.
        let problems = handler_config_problems(handlers, template);
        if problems.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "template {}/{}: {}",
            template.namespace,
            template.name,
            problems.join("; ")
        );
    }
    let list: Vec<String> = missing
        .iter()
        .map(|(handler, steps)| {
            let noun = if steps.len() == 1 { "step" } else { "steps" };
            format!("{handler} ({noun} {})", steps.join(", "))
        })
        .collect();
    anyhow::bail!(
        "template {}/{} uses handlers this process does not have: {} (built in: {}; run it \
         with `tasker serve` and a worker that has them)",
        template.namespace,
        template.name,
        list.join(", "),
        handlers.names().join(", ")
    )
}

async fn run_task(
    args: RunArgs,
    template: TaskTemplate,
    context: Value,
    handlers: HandlerRegistry,
) -> anyhow::Result<ExitCode> {
    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => format!("sqlite:{}", scratch.path().join("tasker.db").display()),
    };
    let store = super::store::open(&url, 32).await?;
    store
        .template_register(&TemplateRegisterParams {
            template: template.to_definition(),
        })
        .await
        .context("registering the template")?;
    let config = EngineConfig {
        ..EngineConfig::default()
    };
    let engine = Engine::start(store.clone(), config, handlers)
        .await
        .context("starting the engine")?;
    let outcome = drive(&engine, &args, &template, context).await;
    engine.shutdown().await;
    let finished = match outcome {
        Ok(task_id) => read_task(store.as_ref(), task_id).await,
        Err(e) => Err(e),
    };
    store.close().await;
    let (task, steps, edges) = finished?;
    if args.json {
        println!("{}", tasker_api::views::task(&task, &steps, &edges));
    } else {
        println!("task {} {}", task.id, task.state);
    }
    Ok(if task.state == TaskState::Complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Submits the task and follows its events until it finishes; returns its id.
async fn drive(
    engine: &Engine,
    args: &RunArgs,
    template: &TaskTemplate,
    context: Value,
) -> anyhow::Result<TaskId> {
    let mut events = engine.subscribe();
    let created = engine
        .submit(&TaskRequest {
            version: Some(template.version.to_string()),
            ..TaskRequest::new(template.namespace.clone(), template.name.clone(), context)
        })
        .await?;
    let task_id = created.task.id;
    let deadline = tokio::time::Instant::now() + args.timeout;
    // A live bar on a terminal; plain lines otherwise (pipes, CI, tests).
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(u64::try_from(template.steps.len()).unwrap_or(0));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} steps {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        bar
    });
    loop {
        let event = match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => anyhow::bail!(
                "task {task_id} did not finish within {}",
                humantime::format_duration(args.timeout)
            ),
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                let task = engine.store().task_get(task_id).await?;
                if task.state.is_terminal() {
                    return Ok(task_id);
                }
                continue;
            }
            Ok(Err(e)) => anyhow::bail!("engine event stream closed: {e}"),
            Ok(Ok(event)) => event,
        };
        match event {
            EngineEvent::StepFinished {
                task_id: t,
                name,
                state,
                attempts,
            } if t == task_id => {
                let line = format!("step {name}: {state} (attempt {attempts})");
                match &bar {
                    Some(bar) => {
                        if state.is_terminal() {
                            bar.inc(1);
                        }
                        bar.set_message(format!("last: {name} {state}"));
                        if !args.json {
                            bar.suspend(|| println!("{line}"));
                        }
                    }
                    None if args.json => eprintln!("{line}"),
                    None => println!("{line}"),
                }
            }
            EngineEvent::TaskFinished { task_id: t, .. } if t == task_id => {
                if let Some(bar) = &bar {
                    bar.finish_and_clear();
                }
                return Ok(task_id);
            }
            _ => {}
        }
    }
}

async fn read_task(
    store: &dyn Store,
    task_id: TaskId,
) -> anyhow::Result<(TaskRow, Vec<StepRow>, Vec<(StepId, StepId)>)> {
    Ok((
        store.task_get(task_id).await?,
        store.step_list(task_id).await?,
        store.step_edges(task_id).await?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(yaml: &str) -> TaskTemplate {
        TaskTemplate::from_yaml_str(yaml, "test.yaml").unwrap()
    }

    #[test]
    fn missing_handlers_are_named_with_their_steps() {
        let t = template(
            "namespace: ns\nname: t\nversion: 1.0.0\nsteps:\n  - {name: a, handler: noop}\n  - {name: b, handler: py_x, depends_on: [a]}\n  - {name: c, handler: {name: py_y, config: {}}, depends_on: [a]}\n  - {name: d, handler: py_x, depends_on: [b, c]}\n",
        );
        let err = check_handlers(&t, &HandlerRegistry::with_builtins())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "template ns/t uses handlers this process does not have: py_x (steps b, d), py_y (step c)"
            ),
            "{err}"
        );
    }

    #[test]
    fn builtin_handlers_pass() {
        let t = template(
            "namespace: ns\nname: t\nversion: 1.0.0\nsteps:\n  - {name: a, handler: noop}\n  - {name: b, handler: {name: sleep, config: {ms: 1}}, depends_on: [a]}\n",
        );
        check_handlers(&t, &HandlerRegistry::with_builtins()).unwrap();
    }

    #[test]
    fn a_bad_builtin_config_is_refused_naming_step_and_key() {
        let t = template(
            "namespace: ns\nname: t\nversion: 1.0.0\nsteps:\n  - {name: nap, handler: {name: sleep, config: {ms: abc}}}\n",
        );
        let err = check_handlers(&t, &HandlerRegistry::with_builtins())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("template ns/t: steps.nap.handler.config.ms: "),
            "{err}"
        );
    }
}
