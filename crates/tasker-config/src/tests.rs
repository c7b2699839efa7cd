use figment::Jail;
use std::time::Duration;

use super::*;

fn load_in(jail: &mut Jail, toml: &str, environment: &str) -> Result<TaskerConfig, ConfigError> {
    jail.create_file("tasker.toml", toml).unwrap();
    TaskerConfig::load(None, environment)
}

/// The engine's defaults are the only ones: a configuration that sets nothing gives the
/// engine exactly its own defaults, pool by pool (the worker pool's included).
#[test]
fn an_empty_configuration_is_the_engines_defaults() {
    let engine = TaskerConfig::default().engine_config();
    let defaults = EngineConfig::default();
    assert_eq!(
        EngineConfig {
            instance_id: defaults.instance_id.clone(),
            ..engine
        },
        defaults
    );
}

/// Keys set nowhere keep the engine's default for the pool's type; `[pools.default]` applies
/// to every pool; `[pools.<type>]` wins over it.
#[test]
fn pool_settings_layer_over_the_engines_defaults_per_type() {
    let mut pools = PoolsConfig::default();
    pools.default.max_executors = Some(6);
    pools.task_claimer.max_executors = Some(2);
    pools.in_process_worker.batch_size = Some(9);
    let engine = EngineConfig::default();
    let claimer = pools.resolve("task_claimer");
    assert_eq!(claimer.max_executors, 2);
    assert_eq!(
        claimer.backpressure_weight_permille,
        engine.pools[&ExecutorType::TaskClaimer].backpressure_weight_permille
    );
    let worker = pools.resolve("in_process_worker");
    assert_eq!(worker.max_executors, 6);
    assert_eq!(worker.batch_size, 9);
    assert_eq!(worker.min_executors, engine.worker_pool.min_executors);
    assert!(worker.heartbeat_during_batch);
}

#[test]
fn defaults_need_no_file() {
    Jail::expect_with(|_| {
        assert_eq!(
            TaskerConfig::load(None, "development").unwrap(),
            TaskerConfig::default()
        );
        Ok(())
    });
}

#[test]
fn environment_tables_and_variables_layer_over_defaults() {
    Jail::expect_with(|jail| {
        let toml = r#"
            [default.database]
            max_connections = 40
            [default.pools.default]
            batch_size = 25
            [default.pools.task_claimer]
            max_executors = 2
            [production.database]
            max_connections = 80
        "#;
        let dev = load_in(jail, toml, "development").unwrap();
        assert_eq!(dev.database.max_connections, 40);
        assert_eq!(dev.pools.resolve("task_claimer").max_executors, 2);
        assert_eq!(dev.pools.resolve("task_claimer").batch_size, 25);
        assert_eq!(dev.pools.resolve("task_finalizer").max_executors, 4);
        let prod = TaskerConfig::load(None, "production").unwrap();
        assert_eq!(prod.database.max_connections, 80);

        jail.set_env("TASKER_DATABASE__MAX_CONNECTIONS", "99");
        jail.set_env("TASKER_POOLS__DEFAULT__BATCH_SIZE", "7");
        let env = TaskerConfig::load(None, "production").unwrap();
        assert_eq!(
            (env.database.max_connections, env.pools.default.batch_size),
            (99, Some(7))
        );

        // Durations read as "250ms", "5s", "1m", from the file and the environment alike.
        let toml = "[default.engine]\nclaim_lease = \"45s\"\n[default.pools.step_enqueuer]\npolling_interval = \"250ms\"\n";
        jail.set_env("TASKER_COORDINATOR__COOLDOWN", "2m");
        let c = load_in(jail, toml, "development").unwrap();
        assert_eq!(c.engine.claim_lease, Duration::from_secs(45));
        assert_eq!(
            c.pools.resolve("step_enqueuer").polling_interval,
            Duration::from_millis(250)
        );
        assert_eq!(c.coordinator.cooldown, Duration::from_secs(120));
        let err = load_in(
            jail,
            "[default.engine]\nclaim_lease = \"soon\"\n",
            "development",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("claim_lease"), "{err}");
        Ok(())
    });
}

#[test]
fn errors_name_the_key() {
    Jail::expect_with(|jail| {
        let err = load_in(
            jail,
            "[default.database]\nmax_conections = 3\n",
            "development",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_conections"), "{err}");
        let err = load_in(
            jail,
            "[default.pools.default]\nbatch_size = \"many\"\n",
            "development",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("batch_size"), "{err}");
        let err = load_in(
            jail,
            "[default.pools.task_claimer]\nmin_executors = 9\n",
            "development",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pools.task_claimer.min_executors"), "{err}");
        let err = load_in(
            jail,
            "[default.pools.claimerz]\nmax_executors = 1\n",
            "development",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("claimerz") && err.contains("pools"), "{err}");
        let err = load_in(
            jail,
            "[default.coordinator]\ntarget_utilization = 1.5\n",
            "development",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("coordinator.target_utilization"), "{err}");
        let err = load_in(
            jail,
            "[default.engine]\nfailure_mode = \"sometimes\"\n",
            "development",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("failure_mode"), "{err}");
        assert!(
            err.contains("fail_fast"),
            "names the accepted values: {err}"
        );
        let err = load_in(
            jail,
            "[default.pools.default]\npolling_interval = \"90s\"\n",
            "development",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pools.default.polling_interval"), "{err}");
        assert!(err.contains("coordinator.heartbeat_timeout (1m)"), "{err}");
        // The millisecond keys of earlier versions name their replacement.
        for (toml, old, new) in [
            (
                "[default.engine]\nclaim_lease_ms = 5000\n",
                "engine.claim_lease_ms",
                "engine.claim_lease",
            ),
            (
                "[production.pools.task_claimer]\nstop_timeout_ms = 5\n",
                "pools.task_claimer.stop_timeout_ms",
                "pools.task_claimer.stop_timeout",
            ),
        ] {
            let err = load_in(jail, toml, "production").unwrap_err().to_string();
            assert!(
                err.contains(old) && err.contains(&format!("set {new} to a duration")),
                "{err}"
            );
        }
        let err = TaskerConfig::load(None, "staging").unwrap_err().to_string();
        assert!(err.contains("TASKER_ENV"), "{err}");
        let err = TaskerConfig::load(Some(Path::new("nope.toml")), "test")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.toml does not exist"), "{err}");
        let err = load_in(
            jail,
            "[default.pools.default]\nbatch_size = 0\n",
            "development",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("pools.default.batch_size"), "{err}");
        Ok(())
    });
}

#[test]
fn telemetry_is_off_by_default_and_takes_an_endpoint_from_file_or_environment() {
    Jail::expect_with(|jail| {
        assert_eq!(
            TaskerConfig::load(None, "development")
                .unwrap()
                .telemetry
                .otlp_endpoint,
            ""
        );
        // The OpenTelemetry variable is the CLI's fallback, not a configuration source.
        jail.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert_eq!(
            TaskerConfig::load(None, "development")
                .unwrap()
                .telemetry
                .otlp_endpoint,
            ""
        );
        let toml = "[default.telemetry]\notlp_endpoint = \"http://jaeger:4318\"\n";
        let c = load_in(jail, toml, "production").unwrap();
        assert_eq!(c.telemetry.otlp_endpoint, "http://jaeger:4318");
        jail.set_env("TASKER_TELEMETRY__OTLP_ENDPOINT", "http://tempo:4318");
        let c = TaskerConfig::load(None, "production").unwrap();
        assert_eq!(c.telemetry.otlp_endpoint, "http://tempo:4318");
        Ok(())
    });
}

#[test]
fn telemetry_errors_name_the_key() {
    Jail::expect_with(|jail| {
        let err = load_in(
            jail,
            "[default.telemetry]\notlp_endpoint = \"jaeger:4318\"\n",
            "development",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("telemetry.otlp_endpoint"), "{err}");
        assert!(err.contains("is not an http:// URL"), "{err}");
        let err = load_in(
            jail,
            "[default.telemetry]\notlp_endpont = \"http://jaeger:4318\"\n",
            "development",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("otlp_endpont"), "{err}");
        Ok(())
    });
}

/// `[cluster]` reaches the engine, and a dead bound no longer than a heartbeat is refused
/// with both values.
#[test]
fn cluster_settings_reach_the_engine_and_dead_after_must_exceed_the_heartbeat() {
    Jail::expect_with(|jail| {
        let config = load_in(
            jail,
            "[default.cluster]\nheartbeat = \"500ms\"\ndead_after = \"3s\"\n",
            "development",
        )
        .unwrap()
        .validated()
        .unwrap();
        let engine = config.engine_config();
        assert_eq!(engine.cluster.heartbeat, Duration::from_millis(500));
        assert_eq!(engine.cluster.dead_after, Duration::from_secs(3));

        let refused = load_in(
            jail,
            "[default.cluster]\nheartbeat = \"2s\"\ndead_after = \"2s\"\n",
            "development",
        )
        .unwrap_err()
        .to_string();
        assert!(refused.contains("cluster.dead_after"), "{refused}");
        assert!(refused.contains("2s"), "{refused}");
        Ok(())
    });
}

/// `[retention]` reaches the engine; `0s` keeps forever.
#[test]
fn retention_reaches_the_engine_and_zero_keeps_forever() {
    Jail::expect_with(|jail| {
        let config = load_in(
            jail,
            "[default.retention]\ncomplete = \"2days\"\nerror = \"0s\"\n",
            "development",
        )
        .unwrap();
        let retention = config.engine_config().cluster.retention;
        assert_eq!(retention.complete, Some(Duration::from_secs(2 * 86_400)));
        assert_eq!(retention.error, None, "kept forever");
        assert_eq!(
            retention.dead_letters,
            Some(Duration::from_secs(30 * 86_400))
        );
        Ok(())
    });
}

/// `[shutdown] grace` reaches the engine, from a file and from the environment.
#[test]
fn shutdown_grace_reaches_the_engine() {
    Jail::expect_with(|jail| {
        let default = load_in(jail, "", "development").unwrap();
        assert_eq!(
            default.engine_config().shutdown_grace,
            Duration::from_secs(30)
        );
        let config = load_in(jail, "[default.shutdown]\ngrace = \"2m\"\n", "development").unwrap();
        assert_eq!(
            config.engine_config().shutdown_grace,
            Duration::from_secs(120)
        );
        jail.set_env("TASKER_SHUTDOWN__GRACE", "5s");
        let config = load_in(jail, "", "development").unwrap();
        assert_eq!(
            config.engine_config().shutdown_grace,
            Duration::from_secs(5)
        );
        Ok(())
    });
}
