//! `tasker serve`: the orchestrator, the REST API and in-process workers in one process.

use std::{future::IntoFuture, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::Args;
use tasker_api::ApiConfig;
use tasker_config::TaskerConfig;
use tasker_orchestrator::{handler::HandlerRegistry, Engine};

/// `tasker serve` arguments. Flags override the configuration file and `TASKER_*` variables.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Configuration file (default: `tasker.toml` when present); `TASKER_ENV` picks its
    /// `[development]`, `[test]` or `[production]` table.
    #[arg(long, env = "TASKER_CONFIG")]
    config: Option<PathBuf>,
    /// Database URL (`postgres://…` or `sqlite:PATH`); SQLite under the data directory when
    /// absent.
    #[arg(long, env = "TASKER_DATABASE_URL")]
    database_url: Option<String>,
    /// Directory of the embedded SQLite database.
    #[arg(long, env = "TASKER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "TASKER_BIND")]
    bind: Option<SocketAddr>,
    /// Do not run steps in this process: every step waits for a remote worker.
    #[arg(long)]
    no_local_workers: bool,
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let environment = std::env::var("TASKER_ENV").unwrap_or_else(|_| "development".into());
    let mut config = TaskerConfig::load(args.config.as_deref(), &environment)?;
    if let Some(url) = &args.database_url {
        config.database.url.clone_from(url);
    }
    if let Some(dir) = &args.data_dir {
        config.database.data_dir = dir.display().to_string();
    }
    if let Some(bind) = args.bind {
        config.server.bind = bind.to_string();
    }
    if args.no_local_workers {
        config.engine.local_workers = false;
    }
    if let Ok(token) = std::env::var("TASKER_API_TOKEN") {
        config.server.auth_token = token;
    }
    let endpoint = crate::telemetry::traces_endpoint(&config.telemetry.otlp_endpoint, |name| {
        std::env::var(name).ok()
    });
    let telemetry = crate::telemetry::Telemetry::init(endpoint.as_deref())?;
    let served = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(serve(config));
    // After the engine stopped: every attempt's span has ended.
    telemetry.shutdown();
    served
}

async fn serve(config: TaskerConfig) -> anyhow::Result<ExitCode> {
    let bind: SocketAddr = config.server.bind.parse().with_context(|| {
        format!(
            "configuration: server.bind: {:?} is not an address",
            config.server.bind
        )
    })?;
    // Bind before touching the disk: when the address is taken, start-up fails having created
    // nothing (no data directory, no database).
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    let url = if config.database.url.is_empty() {
        std::fs::create_dir_all(&config.database.data_dir)
            .with_context(|| format!("creating data directory {}", config.database.data_dir))?;
        format!(
            "sqlite:{}",
            PathBuf::from(&config.database.data_dir)
                .join("tasker.db")
                .display()
        )
    } else {
        config.database.url.clone()
    };
    let store = super::store::open(&url, config.database.max_connections).await?;
    let engine = Arc::new(
        Engine::start(
            store.clone(),
            config.engine_config(),
            HandlerRegistry::with_builtins(),
        )
        .await
        .context("starting the engine")?,
    );
    // The first signal stops the API's intake and starts the engine's drain together, so that
    // requests still in flight do not hold the drain (and its grace) back; event streams end
    // on it too.
    let (signalled, mut api_stopping) = tokio::sync::watch::channel(false);
    let api = ApiConfig {
        auth_token: Some(config.server.auth_token.clone()).filter(|t| !t.is_empty()),
        body_limit: config.server.body_limit_bytes,
        stopping: Some(api_stopping.clone()),
        ..ApiConfig::default()
    };
    let local = listener.local_addr()?;
    // Diagnostics go to stderr; this one line tells scripts where to connect.
    eprintln!("tasker: serving http://{local} on {}", store.backend_name());
    eprintln!("tasker: dashboard at http://{local}/");
    let mut http = tokio::spawn(
        axum::serve(listener, tasker_api::router(engine.clone(), api))
            .with_graceful_shutdown(async move {
                let _ = api_stopping.wait_for(|s| *s).await;
            })
            .into_future(),
    );
    let served = tokio::select! {
        served = &mut http => {
            // The server stopped without a signal: it failed.
            served.context("the API server task")?.context("serving the API")?;
            true
        }
        () = shutdown_signal() => false,
    };
    signalled.send_replace(true);
    eprintln!("tasker: stopping (a second signal forces)");
    tokio::select! {
        () = engine.shutdown() => {}
        () = shutdown_signal() => {
            // At once: what this instance held is failed over by the cluster's leader.
            eprintln!("tasker: forced stop");
            return Ok(ExitCode::from(130));
        }
    }
    if !served {
        if let Ok(result) = http.await {
            result.context("serving the API")?;
        }
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
