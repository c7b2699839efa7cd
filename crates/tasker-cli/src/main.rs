//! `tasker`: the command-line program, and the composition root of the workspace: the only
//! crate that names concrete store backends.
//!
//! Output rule: data goes to stdout, diagnostics to stderr. Exit codes: 0 success, 1 the
//! command ran and found a problem (an invalid template, say), 2 a usage error.

mod commands;
mod telemetry;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Tasker: a workflow orchestration engine.
#[derive(Debug, Parser)]
#[command(name = "tasker", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with task templates.
    #[command(subcommand)]
    Templates(commands::templates::TemplatesCommand),
    /// Run one task from a template file on an embedded engine, to the end.
    Run(commands::run::RunArgs),
    /// Serve the orchestrator, the REST API and in-process workers.
    Serve(commands::serve::ServeArgs),
    /// Submit a task to the server.
    Submit(commands::tasks::SubmitArgs),
    /// Show a task as a tree of steps with states, attempts and durations.
    Status(commands::tasks::StatusArgs),
    /// Work with tasks on the server.
    #[command(subcommand)]
    Tasks(commands::tasks::TasksCommand),
    /// Show the executor pools: executors, health, latency, breakers, backpressure.
    Pools(commands::tasks::PoolsArgs),
    /// Show the instances sharing the database: heartbeats, state, leases held.
    Cluster(commands::tasks::ClusterArgs),
    /// Benchmark workflow shapes end to end on an embedded engine.
    Bench(commands::bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` and `run` install diagnostics themselves, once they know where traces go, and
    // flush them before returning; the other commands only log.
    if !matches!(cli.command, Command::Serve(_) | Command::Run(_)) {
        if let Err(err) = telemetry::Telemetry::init(None) {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    }
    let result = match cli.command {
        Command::Templates(cmd) => commands::templates::run(cmd),
        Command::Run(args) => commands::run::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Submit(args) => commands::tasks::submit(args),
        Command::Status(args) => commands::tasks::status(args),
        Command::Tasks(cmd) => commands::tasks::tasks(cmd),
        Command::Pools(args) => commands::tasks::pools(args),
        Command::Cluster(args) => commands::tasks::cluster(args),
        Command::Bench(args) => commands::bench::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
