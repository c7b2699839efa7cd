//! `tasker serve`: the orchestrator, the REST API and in-process workers in one process.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::Args;
use tasker_api::ApiConfig;
use tasker_orchestrator::{handler::HandlerRegistry, Engine, EngineConfig};

/// `tasker serve` arguments.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Database URL (`postgres://…` or `sqlite:PATH`); SQLite under `--data-dir` when absent.
    #[arg(long, env = "TASKER_DATABASE_URL")]
    database_url: Option<String>,
    /// Directory of the embedded SQLite database.
    #[arg(long, env = "TASKER_DATA_DIR", default_value = "tasker-data")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "TASKER_BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// Do not run steps in this process: every step waits for a remote worker.
    #[arg(long)]
    no_local_workers: bool,
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let url = match &args.database_url {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
            format!("sqlite:{}", args.data_dir.join("tasker.db").display())
        }
    };
    let store = super::store::open(&url).await?;
    let config = EngineConfig {
        local_workers: !args.no_local_workers,
        ..EngineConfig::default()
    };
    let engine = Arc::new(
        Engine::start(store.clone(), config, HandlerRegistry::with_builtins())
            .await
            .context("starting the engine")?,
    );
    let api = ApiConfig {
        auth_token: std::env::var("TASKER_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        ..ApiConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let local = listener.local_addr()?;
    // Diagnostics go to stderr; this one line tells scripts where to connect.
    eprintln!("tasker: serving http://{local} on {}", store.backend_name());
    axum::serve(listener, tasker_api::router(engine.clone(), api))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving the API")?;
    eprintln!("tasker: stopping (a second signal forces)");
    tokio::select! {
        () = engine.shutdown() => {}
        () = shutdown_signal() => eprintln!("tasker: forced stop"),
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
