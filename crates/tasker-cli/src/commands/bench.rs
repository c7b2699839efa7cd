//! `tasker bench`: end-to-end workflow benchmarks on an embedded engine with in-process `noop`
//! handlers. Figures go to BENCHMARKS.md with the command that produced them.

use std::{collections::HashSet, io::IsTerminal, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tasker_orchestrator::{
    handler::HandlerRegistry, pipeline::messages::TaskRequest, Engine, EngineEvent,
};
use tasker_store::{TaskListParams, TemplateRegisterParams};
use tasker_template::TaskTemplate;
use tasker_types::{TaskId, TaskState};
use tokio::{sync::broadcast, time::Instant};

/// Workflow shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Shape {
    /// 4 steps in a chain.
    Linear4,
    /// 1 -> 2 -> 1.
    Diamond4,
    /// A binary tree of 7 steps.
    Tree7,
    /// 1 -> 100 -> 1.
    Fanout100,
    /// One step.
    Single,
    /// One step mapped over 1,000 items: 1,000 instances.
    Map1000,
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// One task at a time: end-to-end latency.
    Latency,
    /// All tasks submitted at once: time until the last completes.
    Throughput,
}

/// `tasker bench` arguments.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Workflow shape.
    #[arg(long, value_enum, default_value = "linear4")]
    shape: Shape,
    /// Latency or throughput.
    #[arg(long, value_enum, default_value = "latency")]
    mode: Mode,
    /// Tasks to run.
    #[arg(long, default_value_t = 200)]
    tasks: usize,
    /// Database; a temporary SQLite file when absent.
    #[arg(long, env = "TASKER_DATABASE_URL")]
    database_url: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Linear4 => "linear4",
            Shape::Diamond4 => "diamond4",
            Shape::Tree7 => "tree7",
            Shape::Fanout100 => "fanout100",
            Shape::Single => "single",
            Shape::Map1000 => "map1000",
        }
    }

    /// Items of the mapped step of `map1000`.
    const MAP_ITEMS: usize = 1000;

    /// The context each task is submitted with.
    fn context(self) -> serde_json::Value {
        match self {
            Shape::Map1000 => json!({"items": (0..Self::MAP_ITEMS).collect::<Vec<_>>()}),
            _ => json!({}),
        }
    }

    /// Steps each task runs: its template's, and a mapped step's instances.
    fn steps_per_task(self, template: &TaskTemplate) -> usize {
        match self {
            Shape::Map1000 => template.steps.len() + Self::MAP_ITEMS,
            _ => template.steps.len(),
        }
    }

    /// The template, as YAML.
    fn template(self) -> String {
        let mut steps: Vec<(String, Vec<String>)> = Vec::new();
        let s =
            |n: &str, deps: &[&str]| (n.to_owned(), deps.iter().map(|d| (*d).to_owned()).collect());
        match self {
            Shape::Linear4 => {
                steps.extend([s("a", &[]), s("b", &["a"]), s("c", &["b"]), s("d", &["c"])])
            }
            Shape::Diamond4 => steps.extend([
                s("a", &[]),
                s("b", &["a"]),
                s("c", &["a"]),
                s("d", &["b", "c"]),
            ]),
            Shape::Tree7 => steps.extend([
                s("r", &[]),
                s("l", &["r"]),
                s("m", &["r"]),
                s("l1", &["l"]),
                s("l2", &["l"]),
                s("m1", &["m"]),
                s("m2", &["m"]),
            ]),
            Shape::Fanout100 => {
                steps.push(s("start", &[]));
                let middle: Vec<String> = (0..100).map(|i| format!("f{i}")).collect();
                for m in &middle {
                    steps.push((m.clone(), vec!["start".into()]));
                }
                steps.push(("end".into(), middle));
            }
            Shape::Single => steps.push(s("only", &[])),
            Shape::Map1000 => {
                return "namespace: bench\nname: map1000\nversion: 1.0.0\nsteps:\n\
                        - {name: each, handler: noop, map: {over: context.items}}\n"
                    .to_owned()
            }
        }
        let mut yaml = format!(
            "namespace: bench\nname: {}\nversion: 1.0.0\nsteps:\n",
            self.name()
        );
        for (name, deps) in steps {
            yaml.push_str(&format!(
                "- {{name: {name}, handler: noop, depends_on: [{}]}}\n",
                deps.join(", ")
            ));
        }
        yaml
    }
}

/// Peak and current resident memory in MiB, from `/proc/self/status` (Linux; 0 elsewhere).
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.tasks == 0 {
        anyhow::bail!("--tasks must be at least 1");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(bench(args))
}

/// Requests per `submit_many` call in throughput mode.
const SUBMIT_BATCH: usize = 500;

async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let scratch = tempfile::tempdir().context("creating a temporary directory")?;
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => format!("sqlite:{}", scratch.path().join("bench.db").display()),
    };
    let store = super::store::open(&url, 32).await?;
    let template = TaskTemplate::from_yaml_str(&args.shape.template(), "bench")?;
    let steps_per_task = args.shape.steps_per_task(&template);
    store
        .template_register(&TemplateRegisterParams {
            template: template.to_definition(),
        })
        .await?;
    // The same configuration `tasker serve` reads (tasker.toml, TASKER_ENV, TASKER_*).
    let environment = std::env::var("TASKER_ENV").unwrap_or_else(|_| "development".into());
    let config = tasker_config::TaskerConfig::load(None, &environment)?;
    let engine = Engine::start(
        store.clone(),
        config.engine_config(),
        HandlerRegistry::with_builtins(),
    )
    .await
    .context("starting the engine")?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(u64::try_from(args.tasks).unwrap_or(0));
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} tasks {per_sec}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    });
    let request = TaskRequest::new("bench", args.shape.name(), args.shape.context());
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut events = engine.subscribe();
    // Counted from the driver's statement events (see `tasker_store::statements`).
    tasker_store::statements::start_counting();
    let statements_before = tasker_store::statements::executed();
    let mut rss_samples = Vec::new();
    let started = Instant::now();
    match args.mode {
        Mode::Latency => {
            for i in 0..args.tasks {
                let t0 = Instant::now();
                let id = engine.submit(&request).await?.task.id;
                wait_for(&mut events, &engine, &[id].into_iter().collect()).await?;
                let micros = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                latency.saturating_record(micros.max(1));
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
                sample_rss(&mut rss_samples, i, args.tasks);
            }
        }
        Mode::Throughput => {
            // Submitted in batches, each created in one transaction (`Engine::submit_many`).
            let mut pending = HashSet::with_capacity(args.tasks);
            let mut left = args.tasks;
            while left > 0 {
                let n = left.min(SUBMIT_BATCH);
                let batch = vec![request.clone(); n];
                pending.extend(
                    engine
                        .submit_many(&batch)
                        .await?
                        .into_iter()
                        .map(|c| c.task.id),
                );
                left -= n;
            }
            let total = pending.len();
            let mut done = 0;
            while !pending.is_empty() {
                let finished = next_finished(&mut events, &engine, &pending).await?;
                for id in finished {
                    pending.remove(&id);
                    done += 1;
                    if let Some(bar) = &bar {
                        bar.inc(1);
                    }
                    sample_rss(&mut rss_samples, done - 1, total);
                }
            }
        }
    }
    let elapsed = started.elapsed();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let statements = tasker_store::statements::executed() - statements_before;
    engine.shutdown().await;
    store.close().await;

    let steps = args.tasks * steps_per_task;
    let secs = elapsed.as_secs_f64();
    let ms = |q: f64| Duration::from_micros(latency.value_at_quantile(q)).as_secs_f64() * 1000.0;
    let (peak_rss, _) = rss_mb();
    let tenth = (rss_samples.len() / 10).max(1);
    let mean = |xs: &[f64]| {
        if xs.is_empty() {
            0.0
        } else {
            xs.iter().sum::<f64>() / xs.len() as f64
        }
    };
    let report = json!({
        "backend": store.backend_name(),
        "shape": args.shape.name(),
        "mode": match args.mode { Mode::Latency => "latency", Mode::Throughput => "throughput" },
        "tasks": args.tasks,
        "steps": steps,
        "duration_s": secs,
        "tasks_per_s": args.tasks as f64 / secs,
        "steps_per_s": steps as f64 / secs,
        "latency_ms": if args.mode == Mode::Latency {
            json!({"p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99), "max": ms(1.0)})
        } else {
            json!(null)
        },
        "db_statements_per_step": statements as f64 / steps as f64,
        "peak_rss_mb": peak_rss,
        "rss_first_10pct_mb": mean(&rss_samples[..tenth.min(rss_samples.len())]),
        "rss_last_10pct_mb": mean(&rss_samples[rss_samples.len().saturating_sub(tenth)..]),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{} {} on {}: {} tasks ({} steps) in {:.2} s = {:.0} tasks/s, {:.0} steps/s; {:.1} statements/step; peak RSS {:.0} MiB",
            args.shape.name(),
            report["mode"].as_str().unwrap_or(""),
            report["backend"].as_str().unwrap_or(""),
            args.tasks,
            steps,
            secs,
            report["tasks_per_s"].as_f64().unwrap_or(0.0),
            report["steps_per_s"].as_f64().unwrap_or(0.0),
            report["db_statements_per_step"].as_f64().unwrap_or(0.0),
            peak_rss
        );
        if args.mode == Mode::Latency {
            println!(
                "latency ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
                ms(0.5),
                ms(0.95),
                ms(0.99),
                ms(1.0)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Records the current RSS at about 100 evenly spaced points of the run.
fn sample_rss(samples: &mut Vec<f64>, done: usize, total: usize) {
    if total < 100 || done % (total / 100) == 0 {
        samples.push(rss_mb().1);
    }
}

/// The tasks of `pending` that have finished, read from the store a page per terminal state
/// rather than a read per task: after the event stream lagged, thousands may be pending, and
/// reading them one by one would make the bench measure its own reads.
async fn terminal_among(engine: &Engine, pending: &HashSet<TaskId>) -> anyhow::Result<Vec<TaskId>> {
    const PAGE: u32 = 1000;
    let Some(oldest) = pending.iter().map(|id| id.0).min() else {
        return Ok(Vec::new());
    };
    let mut done = Vec::new();
    let terminal = [
        TaskState::Complete,
        TaskState::Error,
        TaskState::Cancelled,
        TaskState::ResolvedManually,
    ];
    debug_assert!(terminal.iter().all(|s| s.is_terminal()));
    for state in terminal {
        let mut before_id = None;
        loop {
            let page = engine
                .store()
                .task_list(&TaskListParams {
                    state: Some(state),
                    before_id,
                    limit: PAGE,
                    ..TaskListParams::default()
                })
                .await?;
            done.extend(page.iter().map(|t| t.id).filter(|id| pending.contains(id)));
            match page.last() {
                Some(last) if page.len() == PAGE as usize && last.id.0 > oldest => {
                    before_id = Some(last.id);
                }
                _ => break,
            }
        }
    }
    Ok(done)
}

/// Waits until every task in `ids` finished.
async fn wait_for(
    events: &mut broadcast::Receiver<EngineEvent>,
    engine: &Engine,
    ids: &HashSet<TaskId>,
) -> anyhow::Result<()> {
    let mut left = ids.clone();
    while !left.is_empty() {
        for id in next_finished(events, engine, &left).await? {
            left.remove(&id);
        }
    }
    Ok(())
}

/// The next finished tasks among `pending`, observed by event (or, after the event stream
/// lagged, read from the store).
async fn next_finished(
    events: &mut broadcast::Receiver<EngineEvent>,
    engine: &Engine,
    pending: &HashSet<TaskId>,
) -> anyhow::Result<Vec<TaskId>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(120), events.recv()).await {
            Err(_) => anyhow::bail!(
                "no task finished for 120 s; {} still pending",
                pending.len()
            ),
            Ok(Ok(EngineEvent::TaskFinished { task_id, .. })) if pending.contains(&task_id) => {
                return Ok(vec![task_id])
            }
            Ok(Ok(_)) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                let done = terminal_among(engine, pending).await?;
                if !done.is_empty() {
                    return Ok(done);
                }
            }
            Ok(Err(e)) => anyhow::bail!("engine event stream closed: {e}"),
        }
    }
}
