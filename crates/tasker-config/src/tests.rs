use figment::Jail;

use super::*;

fn load_in(jail: &mut Jail, toml: &str, environment: &str) -> Result<TaskerConfig, ConfigError> {
    jail.create_file("tasker.toml", toml).unwrap();
    TaskerConfig::load(None, environment)
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
        assert_eq!(dev.pools.resolve("task_claimer").0.max_executors, 2);
        assert_eq!(dev.pools.resolve("task_claimer").0.batch_size, 25);
        assert_eq!(dev.pools.resolve("task_finalizer").0.max_executors, 4);
        let prod = TaskerConfig::load(None, "production").unwrap();
        assert_eq!(prod.database.max_connections, 80);

        jail.set_env("TASKER_DATABASE__MAX_CONNECTIONS", "99");
        jail.set_env("TASKER_POOLS__DEFAULT__BATCH_SIZE", "7");
        let env = TaskerConfig::load(None, "production").unwrap();
        assert_eq!(
            (env.database.max_connections, env.pools.default.batch_size),
            (99, 7)
        );
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
        assert!(err.contains("engine.failure_mode"), "{err}");
        let err = load_in(
            jail,
            "[default.pools.default]\npolling_interval_ms = 90000\n",
            "development",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("heartbeat_timeout_ms"), "{err}");
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
