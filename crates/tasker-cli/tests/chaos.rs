//! A cluster of real processes on one PostgreSQL database, hurt on purpose: `tasker serve`
//! instances and Python remote workers killed with SIGKILL and started again, the leader
//! killed, the database server stopped and started, a transaction left open on the steps
//! table. After each, the audit trail is read straight from the database: every task
//! complete, every step completed exactly once, every extra attempt explained.
//!
//! Every instance runs at the default cluster settings (heartbeat 1 s, dead after 5 s), with 12
//! database connections in `degraded` mode so that instances killed but not yet declared dead
//! never push a restarted one over the server's connection limit (16 did: six registered
//! instances of 16 left a restarted one none).
//!
//! These tests run one at a time and alone (`.config/nextest.toml`, and a lock here for
//! `cargo test`): one stops the shared server, and the others bound times that the load of
//! other tests would stretch.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use sqlx::{postgres::PgPoolOptions, PgPool, Row};
use support::{root, try_http_text};
use tasker_store_postgres::test_database::TestDatabase;

/// One test of this file at a time, also under `cargo test`.
static ALONE: Mutex<()> = Mutex::new(());

/// Connections per instance (see the module docs).
const CONNECTIONS: &str = "12";

/// A process the tests start, kill and start again, its output appended to a log file.
struct Proc {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(&'static str, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    fn start(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            // The test's own setting: `tasker serve` refuses unknown `TASKER_` keys.
            .env_remove("TASKER_CHAOS_SEED")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(
            command
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", self.name)),
        );
    }

    /// SIGKILL, and reaped.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and waits up to `within` for it to exit; returns how long it took.
    fn terminate(&mut self, within: Duration) -> Duration {
        let child = self.child.as_mut().expect("running");
        let asked = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}", self.name);
        while child.try_wait().unwrap().is_none() {
            assert!(
                asked.elapsed() < within,
                "{} still running {within:?} after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = None;
        asked.elapsed()
    }

    /// Whether it is still running (it has not exited by itself).
    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The end of its log, for a failure message.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port nothing listens on now, kept by the instance across its restarts.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Requests to whichever instance of a cluster answers.
#[derive(Debug, Clone)]
struct Client {
    addrs: Vec<String>,
}

impl Client {
    /// A JSON request to the first instance that answers it, trying each in turn for up to a
    /// minute (instances die and come back in these tests).
    fn request(&self, method: &str, path: &str, content_type: &str, body: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut turn = 0;
        loop {
            let addr = &self.addrs[turn % self.addrs.len()];
            turn += 1;
            match try_http_text(addr, method, path, content_type, body, None) {
                Ok((200 | 201, text)) => return serde_json::from_str(&text).unwrap(),
                Ok((status, text)) if status < 500 => {
                    panic!("{method} {path}: {status} {text}")
                }
                _ => {}
            }
            assert!(Instant::now() < deadline, "{method} {path}: nobody answers");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A GET to instance `i` only; `None` when it does not answer.
    fn get(&self, i: usize, path: &str) -> Option<String> {
        match try_http_text(&self.addrs[i], "GET", path, "", "", None) {
            Ok((200, text)) => Some(text),
            _ => None,
        }
    }

    fn register(&self, yaml: &str) {
        self.request("POST", "/v1/templates", "application/yaml", yaml);
    }

    /// Submits `tasks`, in batches of 50 spread over `over`, each with an idempotency key so
    /// that a batch sent again (its instance died before answering) creates nothing twice.
    fn submit(&self, tasks: &[Value], over: Duration) {
        let batches: Vec<&[Value]> = tasks.chunks(50).collect();
        let pause = over / u32::try_from(batches.len()).unwrap();
        for batch in batches {
            let body = json!({"tasks": batch}).to_string();
            let answer = self.request("POST", "/v1/tasks/batch", "application/json", &body);
            for result in answer["results"].as_array().unwrap() {
                assert_ne!(result["status"], "error", "{result}");
            }
            std::thread::sleep(pause);
        }
    }
}

/// The processes of one test, on one fresh database, with their logs in one directory (kept
/// when the test fails).
struct Cluster {
    dir: PathBuf,
    client: Client,
    servers: Vec<Proc>,
    workers: Vec<Proc>,
}

impl Cluster {
    /// `servers` instances of `tasker serve` and `workers` Python workers of namespace
    /// `chaos` (worker `i` talks to instance `i`), each started and the instances ready.
    fn start(db: &TestDatabase, test: &str, servers: usize, workers: usize) -> Self {
        Self::start_with(db, test, servers, workers, &[])
    }

    /// [`Cluster::start`], the instances with the settings `env` too.
    fn start_with(
        db: &TestDatabase,
        test: &str,
        servers: usize,
        workers: usize,
        env: &[(&'static str, &str)],
    ) -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{test}-{}", db.name));
        std::fs::create_dir_all(&dir).unwrap();
        let addrs: Vec<String> = (0..servers)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let server = |i: usize| Proc {
            name: format!("server-{i}"),
            program: env!("CARGO_BIN_EXE_tasker").into(),
            args: vec![
                "serve".into(),
                "--bind".into(),
                addrs[i].clone(),
                "--data-dir".into(),
                dir.join(format!("data-{i}")).display().to_string(),
                "--database-url".into(),
                db.url.clone(),
            ],
            envs: [
                ("TASKER_DATABASE__MAX_CONNECTIONS", CONNECTIONS),
                ("TASKER_ENGINE__FAILURE_MODE", "degraded"),
                ("NO_COLOR", "1"),
            ]
            .iter()
            .chain(env)
            .map(|&(k, v)| (k, v.to_owned()))
            .collect(),
            log: dir.join(format!("server-{i}.log")),
            child: None,
        };
        let worker = |i: usize| Proc {
            name: format!("worker-{i}"),
            program: "python3".into(),
            args: vec![
                root()
                    .join("examples/workers/python_worker.py")
                    .display()
                    .to_string(),
                "--url".into(),
                format!("http://{}", addrs[i % servers]),
                "--namespace".into(),
                "chaos".into(),
                "--lease-ms".into(),
                "2000".into(),
                "--poll".into(),
                "0.1".into(),
                // Each step costs the worker a few round trips: a few at once keep two
                // workers ahead of three instances on two cores.
                "--concurrency".into(),
                "8".into(),
            ],
            envs: Vec::new(),
            log: dir.join(format!("worker-{i}.log")),
            child: None,
        };
        let mut cluster = Self {
            servers: (0..servers).map(server).collect(),
            workers: (0..workers).map(worker).collect(),
            client: Client { addrs },
            dir,
        };
        // All at once against the empty database: they race to migrate it.
        for server in &mut cluster.servers {
            server.start();
        }
        for i in 0..servers {
            cluster.wait_ready(i);
        }
        for worker in &mut cluster.workers {
            worker.start();
        }
        cluster
    }

    /// Waits until instance `i` answers `/health`.
    fn wait_ready(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.client.get(i, "/health").is_none() {
            let server = &mut self.servers[i];
            assert!(
                server.running(),
                "{} exited:\n{}",
                server.name,
                server.tail()
            );
            assert!(
                Instant::now() < deadline,
                "{} not up:\n{}",
                server.name,
                server.tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Process `i`: the instances first, then the workers.
    fn process(&mut self, i: usize) -> &mut Proc {
        let servers = self.servers.len();
        if i < servers {
            &mut self.servers[i]
        } else {
            &mut self.workers[i - servers]
        }
    }

    /// Asserts that every process still runs: none exited by itself.
    fn assert_all_running(&mut self) {
        let tails = self.tails();
        for p in self.servers.iter_mut().chain(&mut self.workers) {
            assert!(p.running(), "{} exited:\n{tails}", p.name);
        }
    }

    /// The logs of every process, for a failure message.
    fn tails(&self) -> String {
        self.servers
            .iter()
            .chain(&self.workers)
            .map(|p| format!("--- {} ({})\n{}", p.name, p.log.display(), p.tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.servers.iter_mut().chain(&mut self.workers) {
            p.kill();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The templates of namespace `chaos`: three shapes of in-process steps, each task with one
/// `command` step (it appends `<task key> <step> <attempt>` to the file at `context.log` per
/// execution) and one step only the Python worker runs (`py_greet`, `py_total`), the linear
/// shape with a step that fails once (`fail`: a retry costs a trip through the evaluator).
/// Kept to that on two cores: a shell per command and a Python round trip per step are the
/// dearest work of the run. Every step may be tried often: attempts are lost to the kills.
fn chaos_templates() -> Vec<String> {
    let retry = "retry: {max_attempts: 20, base_ms: 10, max_ms: 100}";
    let command = |name: &str| {
        format!(
            "handler: {{name: command, config: {{program: 'echo \"$1 {name} $2\" >> \"$3\"', \
             shell: true, args: ['{{{{ context.key }}}}', '{{{{ attempt }}}}', \
             '{{{{ context.log }}}}']}}}}"
        )
    };
    let fail = "handler: {name: fail, config: {times: 1}}";
    let shape = |name: &str, steps: &[(&str, String, &[&str])]| {
        let mut yaml = format!("namespace: chaos\nname: {name}\nversion: 1.0.0\nsteps:\n");
        for (step, handler, parents) in steps {
            yaml.push_str(&format!(
                "  - name: {step}\n    {handler}\n    depends_on: [{}]\n    {retry}\n",
                parents.join(", ")
            ));
        }
        yaml
    };
    vec![
        shape(
            "linear",
            &[
                ("a", "handler: noop".into(), &[]),
                ("b", fail.into(), &["a"]),
                ("c", command("c"), &["b"]),
                ("d", "handler: py_greet".into(), &["c"]),
            ],
        ),
        shape(
            "diamond",
            &[
                ("start", "handler: noop".into(), &[]),
                ("left", command("left"), &["start"]),
                ("right", "handler: noop".into(), &["start"]),
                ("join", "handler: py_total".into(), &["left", "right"]),
            ],
        ),
        shape(
            "tree",
            &[
                ("root", "handler: noop".into(), &[]),
                ("branch_l", command("branch_l"), &["root"]),
                ("branch_r", "handler: py_greet".into(), &["root"]),
                ("leaf_ll", "handler: noop".into(), &["branch_l"]),
                ("leaf_lr", "handler: noop".into(), &["branch_l"]),
                ("leaf_rl", "handler: noop".into(), &["branch_r"]),
                ("leaf_rr", "handler: noop".into(), &["branch_r"]),
            ],
        ),
    ]
}

/// `count` task requests cycling through the three shapes, keyed `k0`, `k1`, …
fn chaos_tasks(count: usize, log: &Path) -> Vec<Value> {
    let shapes = ["linear", "diamond", "tree"];
    (0..count)
        .map(|i| {
            json!({
                "namespace": "chaos",
                "name": shapes[i % shapes.len()],
                "idempotency_key": format!("chaos-{i}"),
                "context": {"key": format!("k{i}"), "log": log, "name": format!("n{i}"),
                            "amounts": [1, 2]},
            })
        })
        .collect()
}

/// The error of an attempt that failed as its `fail` handler was told to.
const INJECTED: &str = "fail handler: attempt 1 fails as configured";
/// The error of an attempt lost with its worker (see the worker pipeline's `lost_attempt`).
const LOST: &str = "its lease ran out";

/// What the audit trail says once every task is complete.
#[derive(Debug, Default)]
struct Audit {
    tasks: usize,
    steps: usize,
    attempts: usize,
    injected: usize,
    lost: usize,
    /// Completions per instance that applied them.
    completed_by: BTreeMap<String, usize>,
}

/// Reads the audit trail and checks it: every task and step Complete, each step's `complete`
/// transition exactly once, its attempts each started once and each extra one explained by a
/// failure the test injected (at most once per `fail` step, whose first attempt never
/// succeeds) or an attempt lost with its worker; no message left, no dead letter.
async fn audit(pool: &PgPool, expected_tasks: usize) -> Audit {
    let tasks: Vec<(i64, String)> = sqlx::query_as("SELECT id, state FROM tasks ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(tasks.len(), expected_tasks, "each request made one task");
    let unfinished: Vec<_> = tasks.iter().filter(|(_, s)| s != "Complete").collect();
    assert!(unfinished.is_empty(), "tasks not Complete: {unfinished:?}");

    // One pass over the transitions, grouped per step (they are indexed by task, not step).
    let rows = sqlx::query(
        "WITH per_step AS ( \
           SELECT step_id, \
             COUNT(*) FILTER (WHERE event = 'complete') AS completes, \
             COUNT(*) FILTER (WHERE event = 'start') AS starts, \
             COALESCE(array_agg(COALESCE(reason, '') ORDER BY id) \
                        FILTER (WHERE event = 'fail_retryable'), '{}') AS failures, \
             MIN(instance_id) FILTER (WHERE event = 'complete') AS completed_by \
           FROM transitions WHERE step_id IS NOT NULL GROUP BY step_id) \
         SELECT s.id, s.name, s.handler, s.state, s.attempts, \
           COALESCE(p.completes, 0) AS completes, COALESCE(p.starts, 0) AS starts, \
           COALESCE(p.failures, '{}') AS failures, \
           COALESCE(p.completed_by, '') AS completed_by \
         FROM steps s LEFT JOIN per_step p ON p.step_id = s.id ORDER BY s.id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut audit = Audit {
        tasks: tasks.len(),
        steps: rows.len(),
        ..Audit::default()
    };
    for row in &rows {
        let id: i64 = row.get("id");
        let name: String = row.get("name");
        let handler: String = row.get("handler");
        let state: String = row.get("state");
        let attempts: i64 = row.get("attempts");
        let failures: Vec<String> = row.get("failures");
        let step = format!("step {id} ({name}, {handler})");
        assert_eq!(state, "Complete", "{step}");
        assert_eq!(row.get::<i64, _>("completes"), 1, "{step}: completed once");
        assert_eq!(
            row.get::<i64, _>("starts"),
            attempts,
            "{step}: each attempt started once"
        );
        assert_eq!(
            failures.len(),
            usize::try_from(attempts - 1).unwrap(),
            "{step}: each extra attempt follows a failure: {failures:?}"
        );
        let injected = failures.iter().filter(|f| f.contains(INJECTED)).count();
        let lost = failures.iter().filter(|f| f.contains(LOST)).count();
        assert_eq!(
            injected + lost,
            failures.len(),
            "{step}: a failure neither injected nor lost: {failures:?}"
        );
        if handler == "fail" {
            assert!(injected <= 1, "{step}: injected once at most: {failures:?}");
            assert!(attempts >= 2, "{step}: its first attempt cannot succeed");
        } else {
            assert_eq!(injected, 0, "{step}: {failures:?}");
        }
        audit.attempts += usize::try_from(attempts).unwrap();
        audit.injected += injected;
        audit.lost += lost;
        *audit
            .completed_by
            .entry(row.get("completed_by"))
            .or_default() += 1;
    }

    // The last acknowledgements may trail the last completion by a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<(String, i64)> = sqlx::query_as(
            "SELECT queue, COUNT(*) FROM queue_messages GROUP BY queue ORDER BY queue",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "messages left: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(dead, 0, "no dead letter");
    audit
}

/// Checks the lines the `command` steps appended: no attempt of a step ran its command twice,
/// none ran beyond the step's attempts, and the attempt that completed it ran. Returns how
/// many lines (executions) there were.
async fn audit_commands(pool: &PgPool, log: &Path) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut runs: BTreeMap<(String, String), BTreeSet<i64>> = BTreeMap::new();
    let mut lines = 0;
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let [key, step, attempt] = parts[..] else {
            panic!("not a command line: {line:?}")
        };
        let attempt: i64 = attempt.parse().unwrap();
        let new = runs
            .entry((key.to_owned(), step.to_owned()))
            .or_default()
            .insert(attempt);
        assert!(new, "attempt {attempt} of {key}/{step} ran twice");
        lines += 1;
    }
    let steps: Vec<(String, String, i64)> = sqlx::query_as(
        // A mapped step runs no handler: its instances do.
        "SELECT t.context->>'key', s.name, s.attempts FROM steps s \
         JOIN tasks t ON t.id = s.task_id \
         WHERE s.handler = 'command' AND NOT (s.map IS NOT NULL AND s.map_of IS NULL)",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (key, name, attempts) in &steps {
        let ran = runs
            .remove(&(key.clone(), name.clone()))
            .unwrap_or_default();
        assert!(
            ran.contains(attempts),
            "{key}/{name}: its completing attempt {attempts} ran: {ran:?}"
        );
        assert!(
            ran.iter().all(|a| (1..=*attempts).contains(a)),
            "{key}/{name}: {ran:?} of {attempts}"
        );
    }
    assert!(runs.is_empty(), "lines of no step: {runs:?}");
    lines
}

/// What holds the unfinished tasks back, for a failure message (the database is dropped after
/// a CI run): their steps with state, attempts, lease holder and visibility, and what waits in
/// the queues.
async fn stuck(pool: &PgPool) -> String {
    let steps: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', s.task_id, t.state, s.name, s.handler, s.state, s.attempts, \
           COALESCE(s.queue, '-'), COALESCE(s.lease_holder, '-'), \
           s.visible_at_ms - (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT) \
         FROM steps s JOIN tasks t ON t.id = s.task_id \
         WHERE t.state <> 'Complete' AND s.state <> 'Complete' ORDER BY s.task_id, s.id LIMIT 40",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let queues: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT queue, COUNT(*), \
           MAX(visible_at_ms) - (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT \
         FROM queue_messages GROUP BY queue",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    // Sessions that wait for a lock, or whose transaction has been open for a while.
    let sessions: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', pid, state, wait_event_type, wait_event, \
           round(EXTRACT(EPOCH FROM now() - xact_start)::numeric, 1), \
           left(regexp_replace(query, '\\s+', ' ', 'g'), 120)) \
         FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND (wait_event_type = 'Lock' OR xact_start < now() - interval '2 seconds')",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let held: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT queue, COALESCE(lease_holder, '-'), COUNT(*) FROM queue_messages \
         WHERE lease_token IS NOT NULL GROUP BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default();
    let mut out = format!(
        "sessions waiting or long in a transaction (pid, state, wait, seconds, query): \
         {sessions:#?}\nmessages held (queue, holder, count): {held:?}\n"
    );
    out.push_str(
        "unfinished steps (task, task state, step, handler, state, attempts, queue, holder, \
         visible in ms):\n",
    );
    for step in steps {
        out.push_str(&format!("  {step}\n"));
    }
    out.push_str(&format!(
        "messages (queue, count, latest visible in ms): {queues:?}"
    ));
    out
}

/// Waits until `count` tasks are Complete, or `deadline`.
async fn wait_complete(pool: &PgPool, count: usize, deadline: Instant) -> bool {
    let count = i64::try_from(count).unwrap();
    loop {
        let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE state = 'Complete'")
            .fetch_one(pool)
            .await
            .unwrap_or(0);
        if done == count {
            return true;
        }
        if Instant::now() >= deadline {
            eprintln!("{done} of {count} tasks complete");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A tiny seeded generator (xorshift64*) for the kill schedule: the seed is printed so that a
/// failing schedule can be replayed with `TASKER_CHAOS_SEED`; a crate would add nothing here.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// What each test here sets up and takes down: the lock that runs it alone, a runtime for its
/// database reads, a fresh database and a pool of connections to it.
struct Run {
    rt: tokio::runtime::Runtime,
    db: TestDatabase,
    pool: PgPool,
    _alone: std::sync::MutexGuard<'static, ()>,
}

impl Run {
    fn new() -> Self {
        let alone = ALONE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let db = rt.block_on(TestDatabase::create()).unwrap();
        let pool = rt
            .block_on(PgPoolOptions::new().max_connections(2).connect(&db.url))
            .unwrap();
        Self {
            rt,
            db,
            pool,
            _alone: alone,
        }
    }

    /// Waits until `count` tasks are Complete; at `deadline`, fails saying `what` with the
    /// processes' logs.
    fn expect_complete(&self, cluster: &Cluster, count: usize, deadline: Instant, what: &str) {
        let done = self.rt.block_on(wait_complete(&self.pool, count, deadline));
        if !done {
            let stuck = self.rt.block_on(stuck(&self.pool));
            panic!("{what}:\n{stuck}\n{}", cluster.tails());
        }
    }

    fn audit(&self, tasks: usize) -> Audit {
        self.rt.block_on(audit(&self.pool, tasks))
    }

    /// Stops the processes, then drops the database.
    fn finish(self, cluster: Cluster) {
        drop(cluster);
        self.rt.block_on(self.pool.close());
        self.rt.block_on(self.db.drop_database()).unwrap();
    }
}

/// The value of the unlabelled gauge `name` in a `/metrics` text.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Three instances and two Python workers run 2,000 tasks while, for 30 s, one of the five
/// processes is killed with SIGKILL every 1–3 s and started again. Nothing is lost, nothing is
/// applied twice, every extra attempt is explained, and the last task completes within 15 s of
/// the last kill.
#[test]
fn kills_lose_nothing_and_apply_nothing_twice() {
    const TASKS: usize = 2_000;
    let run = Run::new();
    let seed = std::env::var("TASKER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos();
            u64::from(nanos) | 1
        });
    eprintln!("chaos: seed {seed} (TASKER_CHAOS_SEED={seed} replays the kill schedule)");

    let mut cluster = Cluster::start(&run.db, "chaos", 3, 2);
    for template in chaos_templates() {
        cluster.client.register(&template);
    }
    let log = cluster.dir.join("commands.log");
    let tasks = chaos_tasks(TASKS, &log);
    let client = cluster.client.clone();
    let submitter = std::thread::spawn(move || client.submit(&tasks, Duration::from_secs(20)));

    let mut dice = Dice(seed);
    let chaos = Instant::now();
    let mut kills: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_kill = chaos;
    loop {
        let pause = Duration::from_millis(1_000 + dice.below(2_001));
        if chaos.elapsed() + pause > Duration::from_secs(30) {
            break;
        }
        std::thread::sleep(pause);
        let victim = usize::try_from(dice.below(5)).unwrap();
        let tails = cluster.tails();
        let process = cluster.process(victim);
        assert!(process.running(), "{} exited:\n{tails}", process.name);
        process.kill();
        last_kill = Instant::now();
        process.start();
        *kills.entry(process.name.clone()).or_default() += 1;
    }
    submitter.join().expect("every task submitted");
    run.expect_complete(
        &cluster,
        TASKS,
        last_kill + Duration::from_secs(15),
        &format!("not every task complete within 15 s of the last kill (seed {seed})"),
    );
    let finish = last_kill.elapsed();
    cluster.assert_all_running();
    let audit = run.audit(TASKS);
    let executions = run.rt.block_on(audit_commands(&run.pool, &log));
    eprintln!(
        "chaos: {} kills ({kills:?}) in {:.1} s; {} tasks and {} steps Complete, each step \
         completed once; {} attempts = {} steps + {} injected failures + {} attempts lost to \
         kills; {executions} command executions; 0 messages left, 0 dead letters; the last \
         task complete {:.1} s after the last kill; completions applied per instance: {:?}",
        kills.values().sum::<usize>(),
        (last_kill - chaos).as_secs_f64(),
        audit.tasks,
        audit.steps,
        audit.attempts,
        audit.steps,
        audit.injected,
        audit.lost,
        finish.as_secs_f64(),
        audit.completed_by.values().collect::<Vec<_>>(),
    );
    assert_eq!(audit.attempts, audit.steps + audit.injected + audit.lost);
    run.finish(cluster);
}

/// Which instances believe they lead, by their own `tasker_cluster_leader` gauge (those that
/// do not answer are left out).
fn believers(client: &Client) -> Vec<usize> {
    (0..client.addrs.len())
        .filter(|&i| {
            client
                .get(i, "/metrics")
                .and_then(|m| gauge(&m, "tasker_cluster_leader"))
                == Some(1.0)
        })
        .collect()
}

/// Samples the instances' leader gauges every 50 ms until exactly one leads, and returns it;
/// fails if two ever do, or if nobody leads by `deadline`. Counts the samples.
fn the_one_leader(cluster: &Cluster, samples: &mut usize, deadline: Instant) -> usize {
    loop {
        let leading = believers(&cluster.client);
        *samples += 1;
        assert!(leading.len() <= 1, "two leaders: {leading:?}");
        if let [one] = leading[..] {
            return one;
        }
        assert!(
            Instant::now() < deadline,
            "nobody leads:\n{}",
            cluster.tails()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Three instances at the default settings: kill -9 the leader, and another takes over
/// within 10 s with the next epoch; at no sampled moment do two believe they lead.
#[test]
fn a_killed_leader_is_replaced_within_ten_seconds() {
    let run = Run::new();
    let mut cluster = Cluster::start(&run.db, "leader", 3, 0);
    let mut samples = 0;
    let leader = the_one_leader(
        &cluster,
        &mut samples,
        Instant::now() + Duration::from_secs(30),
    );
    let view = |i: usize| -> Value {
        serde_json::from_str(&cluster.client.get(i, "/v1/cluster").unwrap()).unwrap()
    };
    let before = view(leader);
    let epoch = before["leader_epoch"].as_i64().unwrap();
    for _ in 0..20 {
        assert_eq!(believers(&cluster.client), [leader], "one leader, steady");
        samples += 1;
        std::thread::sleep(Duration::from_millis(50));
    }

    cluster.servers[leader].kill();
    let killed = Instant::now();
    let successor = the_one_leader(&cluster, &mut samples, killed + Duration::from_secs(10));
    let takeover = killed.elapsed();
    let after = view(successor);
    assert!(
        after["leader_epoch"].as_i64().unwrap() > epoch,
        "a new epoch: {before} then {after}"
    );
    assert_ne!(after["leader"], before["leader"]);
    // The new leader declares the old one dead at once: its heartbeat is older than 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    while view(successor)["instances"].as_array().unwrap().len() != 2 {
        assert!(Instant::now() < deadline, "{}", view(successor));
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "leader: instance {} took over {:.2} s after the leader was killed (epoch {epoch} -> \
         {}); {samples} samples of every instance's leader gauge, never two",
        after["leader"],
        takeover.as_secs_f64(),
        after["leader_epoch"]
    );
    run.finish(cluster);
}

/// Stops or starts the database server with `TASKER_TEST_PG_CTL` (set by `scripts/test`).
fn pg_ctl(action: &str) {
    if let Err(problem) = try_pg_ctl(action) {
        panic!("{problem}");
    }
}

fn try_pg_ctl(action: &str) -> Result<(), String> {
    let ctl = std::env::var("TASKER_TEST_PG_CTL").unwrap_or_default();
    if ctl.is_empty() {
        return Err(
            "TASKER_TEST_PG_CTL is not set: run the tests through scripts/test, which \
                    sets it to the command that stops and starts the server \
                    (`$TASKER_TEST_PG_CTL stop|start`)"
                .into(),
        );
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("{ctl} {action}"))
        .output()
        .map_err(|e| format!("{ctl} {action}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{ctl} {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Starts the server again should the test fail while it is stopped: the suite goes on.
struct ServerBack(bool);

impl Drop for ServerBack {
    fn drop(&mut self) {
        // Not a panic: this runs while a failed test unwinds, whose message matters more.
        if self.0 {
            if let Err(problem) = try_pg_ctl("start") {
                eprintln!("could not start the server again: {problem}");
            }
        }
    }
}

/// How often the breakers of instance `i` opened, by its pools view.
fn breaker_trips(client: &Client, i: usize) -> u64 {
    let pools: Value = serde_json::from_str(&client.get(i, "/v1/health/pools").unwrap()).unwrap();
    pools["pools"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p["circuit_breaker_trips"].as_u64().unwrap())
        .sum()
}

/// PostgreSQL stops for 10 s while two instances and a Python worker run tasks: the instances'
/// breakers open, no process exits, and once the server is back every task completes with
/// nothing applied twice, within 10 s of the server's return.
#[test]
fn a_database_restart_is_ridden_out() {
    const TASKS: usize = 300;
    let run = Run::new();
    let mut cluster = Cluster::start(&run.db, "pg-restart", 2, 1);
    for template in chaos_templates() {
        cluster.client.register(&template);
    }
    let log = cluster.dir.join("commands.log");
    cluster
        .client
        .submit(&chaos_tasks(TASKS, &log), Duration::from_secs(1));

    let mut back = ServerBack(true);
    pg_ctl("stop");
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(10) {
        cluster.assert_all_running();
        std::thread::sleep(Duration::from_millis(100));
    }
    let trips = [
        breaker_trips(&cluster.client, 0),
        breaker_trips(&cluster.client, 1),
    ];
    pg_ctl("start");
    back.0 = false;
    let outage = stopped.elapsed();
    assert!(
        trips.iter().all(|&t| t > 0),
        "each instance's breakers opened while the server was down: {trips:?}\n{}",
        cluster.tails()
    );

    // What the instances held when the server went is released as their heartbeats resume
    // (they were silent for longer than `cluster.dead_after`), not after its leases (30 s for
    // task claims, 60 s for steps and messages).
    run.expect_complete(
        &cluster,
        TASKS,
        Instant::now() + Duration::from_secs(10),
        "not every task complete within 10 s of the server's return",
    );
    let recovered = stopped.elapsed() - outage;
    cluster.assert_all_running();
    for server in &cluster.servers {
        let log = std::fs::read_to_string(&server.log).unwrap();
        assert!(
            log.contains("released what this instance held"),
            "{} released what it held after its silence:\n{}",
            server.name,
            server.tail()
        );
    }
    let audit = run.audit(TASKS);
    run.rt.block_on(audit_commands(&run.pool, &log));
    eprintln!(
        "restart: server down {:.1} s; breakers opened {trips:?} times per instance; every task \
         complete {:.1} s after it was back; {} steps, {} attempts lost, no process exited",
        outage.as_secs_f64(),
        recovered.as_secs_f64(),
        audit.steps,
        audit.lost
    );
    run.finish(cluster);
}

/// A session holds a transaction open for 30 s with row locks on waiting steps: the
/// instances go on running every other task meanwhile, nobody is declared dead, and once the
/// session ends the held tasks complete too, nothing lost or applied twice.
#[test]
fn a_transaction_left_open_stops_nothing_else() {
    const QUICK: usize = 300;
    let run = Run::new();
    // The open transaction is dropped in the runtime's context, should the test fail.
    let context = run.rt.enter();
    let mut cluster = Cluster::start(&run.db, "idle-tx", 2, 0);
    cluster.client.register(
        "namespace: chaos\nname: held\nversion: 1.0.0\nsteps:\n\
         - {name: first, handler: {name: sleep, config: {ms: 1000}}}\n\
         - {name: second, handler: noop, depends_on: [first]}\n",
    );
    cluster.client.register(
        "namespace: chaos\nname: quick\nversion: 1.0.0\nsteps:\n\
         - {name: a, handler: noop}\n- {name: b, handler: noop, depends_on: [a]}\n\
         - {name: c, handler: noop, depends_on: [b]}\n",
    );
    let held: Vec<Value> = (0..3)
        .map(|i| json!({"namespace": "chaos", "name": "held", "context": {"i": i}}))
        .collect();
    cluster.client.submit(&held, Duration::ZERO);

    // The open transaction: the held tasks' second steps locked, a snapshot kept.
    let mut session = run.rt.block_on(run.pool.begin()).unwrap();
    let locked: Vec<i64> = run
        .rt
        .block_on(
            sqlx::query_scalar("SELECT id FROM steps WHERE name = 'second' ORDER BY id FOR UPDATE")
                .fetch_all(&mut *session),
        )
        .unwrap();
    assert_eq!(locked.len(), 3);
    let opened = Instant::now();

    let quick: Vec<Value> = (0..QUICK)
        .map(|i| {
            json!({"namespace": "chaos", "name": "quick", "context": {"i": i},
                   "idempotency_key": format!("quick-{i}")})
        })
        .collect();
    cluster.client.submit(&quick, Duration::from_secs(5));
    run.expect_complete(
        &cluster,
        QUICK,
        opened + Duration::from_secs(25),
        "the other tasks stalled behind the open transaction",
    );
    let quick_time = opened.elapsed();
    let handed_over = cluster.servers.iter().any(|server| {
        std::fs::read_to_string(&server.log)
            .unwrap()
            .contains("handing them to the result processors")
    });
    assert!(
        handed_over,
        "the results that met the lock went to the result processors:\n{}",
        cluster.tails()
    );
    let view: Value = serde_json::from_str(&cluster.client.get(0, "/v1/cluster").unwrap()).unwrap();
    assert_eq!(view["instances"].as_array().unwrap().len(), 2, "{view}");
    cluster.assert_all_running();

    std::thread::sleep(Duration::from_secs(30).saturating_sub(opened.elapsed()));
    let complete: i64 = run
        .rt
        .block_on(
            sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE state = 'Complete'")
                .fetch_one(&run.pool),
        )
        .unwrap();
    assert_eq!(
        usize::try_from(complete).unwrap(),
        QUICK,
        "the held tasks waited for the lock"
    );
    run.rt.block_on(session.rollback()).unwrap();
    let held_for = opened.elapsed();
    run.expect_complete(
        &cluster,
        QUICK + 3,
        Instant::now() + Duration::from_secs(30),
        "the held tasks did not complete",
    );
    let audit = run.audit(QUICK + 3);
    eprintln!(
        "idle transaction: held {:.1} s; the {QUICK} other tasks complete {:.1} s after it \
         opened; the held ones {:.1} s after it ended; {} attempts lost",
        held_for.as_secs_f64(),
        quick_time.as_secs_f64(),
        (opened.elapsed() - held_for).as_secs_f64(),
        audit.lost
    );
    cluster.assert_all_running();
    drop(context);
    run.finish(cluster);
}

/// The only instance is killed with SIGKILL while a 200-item mapped step runs on PostgreSQL, 8
/// instances at a time, and started again: every instance runs to Complete, each completed
/// once, no attempt's command ran twice, and the mapped step gathers all 200 outputs.
#[test]
fn a_map_survives_a_kill_mid_way() {
    const ITEMS: usize = 200;
    let run = Run::new();
    let mut cluster = Cluster::start(&run.db, "map-kill", 1, 0);
    let log = cluster.dir.join("commands.log");
    cluster.client.register(
        "namespace: chaos\nname: fan\nversion: 1.0.0\nsteps:\n\
         - name: each\n  map: {over: context.xs, max_parallel: 8}\n\
         \x20 retry: {max_attempts: 20, base_ms: 10, max_ms: 100}\n\
         \x20 handler: {name: command, config: {program: 'sleep 0.02; echo \"$1 each[$2] $3\" \
         >> \"$4\"; echo $2', shell: true, args: ['{{ context.key }}', '{{ index }}', \
         '{{ attempt }}', '{{ context.log }}']}}\n",
    );
    let xs: Vec<usize> = (0..ITEMS).collect();
    let task = json!({"namespace": "chaos", "name": "fan",
                      "context": {"xs": xs, "key": "k0", "log": log}});
    cluster.client.submit(&[task], Duration::ZERO);
    let completed = || -> i64 {
        run.rt
            .block_on(
                sqlx::query_scalar(
                    "SELECT COUNT(*) FROM steps WHERE map_of IS NOT NULL AND state = 'Complete'",
                )
                .fetch_one(&run.pool),
            )
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while completed() < 40 {
        assert!(
            Instant::now() < deadline,
            "the map never got going:\n{}",
            cluster.tails()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let at_kill = completed();
    let server = cluster.process(0);
    server.kill();
    server.start();
    run.expect_complete(
        &cluster,
        1,
        Instant::now() + Duration::from_secs(30),
        "the map did not finish after the restart",
    );
    let instances: Vec<(String, i64, i64, i64)> = run
        .rt
        .block_on(
            sqlx::query_as(
                "SELECT s.name, s.attempts, \
                   (SELECT COUNT(*) FROM transitions t \
                    WHERE t.step_id = s.id AND t.event = 'complete'), \
                   (SELECT COUNT(*) FROM transitions t \
                    WHERE t.step_id = s.id AND t.event = 'start') \
                 FROM steps s WHERE s.map_of IS NOT NULL ORDER BY s.map_index",
            )
            .fetch_all(&run.pool),
        )
        .unwrap();
    assert_eq!(instances.len(), ITEMS);
    for (name, attempts, completes, starts) in &instances {
        assert_eq!(*completes, 1, "{name} completed once");
        assert_eq!(starts, attempts, "{name}: each attempt started once");
    }
    let (state, result, gathers): (String, Value, i64) = run
        .rt
        .block_on(
            sqlx::query_as(
                "SELECT s.state, s.result, (SELECT COUNT(*) FROM transitions t \
                   WHERE t.step_id = s.id AND t.event = 'gather') \
                 FROM steps s WHERE s.name = 'each'",
            )
            .fetch_one(&run.pool),
        )
        .unwrap();
    assert_eq!((state.as_str(), gathers), ("Complete", 1));
    assert_eq!(result, json!(xs), "every output, in item order");
    let executions = run.rt.block_on(audit_commands(&run.pool, &log));
    let lost: i64 = instances.iter().map(|(_, a, _, _)| a - 1).sum();
    eprintln!(
        "map kill: killed with {at_kill} of {ITEMS} instances complete; all {ITEMS} Complete, \
         each once; {executions} command executions, {lost} attempts lost to the kill"
    );
    run.finish(cluster);
}

/// The step leases instance `i` holds, by the cluster view.
fn held_by(client: &Client, i: usize) -> u64 {
    let (Some(pools), Some(cluster)) = (
        client.get(i, "/v1/health/pools"),
        client.get(i, "/v1/cluster"),
    ) else {
        return 0;
    };
    let me = serde_json::from_str::<Value>(&pools).unwrap()["instance"].clone();
    serde_json::from_str::<Value>(&cluster).unwrap()["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|instance| instance["id"] == me)
        .and_then(|instance| instance["leases"].as_u64())
        .unwrap_or(0)
}

/// Every instance, one after the other, stopped with SIGTERM while tasks run and started
/// again: each drains (finishes its running steps, releases the rest, deregisters), so every
/// task completes with no attempt lost and no step run twice.
#[test]
fn a_rolling_restart_loses_and_reruns_nothing() {
    const TASKS: usize = 600;
    let run = Run::new();
    // A grace well under the wait for each stop below, so that a drain cut short by its grace
    // and a stop that hangs tell apart.
    let mut cluster = Cluster::start_with(
        &run.db,
        "rolling",
        3,
        0,
        &[("TASKER_SHUTDOWN__GRACE", "10s")],
    );
    let nap = "handler: {name: sleep, config: {ms: 300}}";
    cluster.client.register(&format!(
        "namespace: chaos\nname: naps\nversion: 1.0.0\nsteps:\n\
         - {{name: a, {nap}}}\n- {{name: b, {nap}, depends_on: [a]}}\n\
         - {{name: c, {nap}, depends_on: [a]}}\n- {{name: d, {nap}, depends_on: [b, c]}}\n"
    ));
    let tasks: Vec<Value> = (0..TASKS)
        .map(|i| {
            json!({"namespace": "chaos", "name": "naps", "context": {"i": i},
                   "idempotency_key": format!("naps-{i}")})
        })
        .collect();
    let client = cluster.client.clone();
    let submitter = std::thread::spawn(move || client.submit(&tasks, Duration::from_secs(10)));
    let mut drains = Vec::new();
    for i in 0..cluster.servers.len() {
        // Stopped while it runs steps, so that its drain has work to finish.
        let deadline = Instant::now() + Duration::from_secs(30);
        while held_by(&cluster.client, i) == 0 {
            assert!(Instant::now() < deadline, "instance {i} never ran a step");
            std::thread::sleep(Duration::from_millis(20));
        }
        let drain = cluster.servers[i].terminate(Duration::from_secs(20));
        assert!(
            drain < Duration::from_secs(10),
            "instance {i} drained within its grace: {drain:?}"
        );
        drains.push(drain);
        cluster.servers[i].start();
        cluster.wait_ready(i);
    }
    submitter.join().expect("every task submitted");
    run.expect_complete(
        &cluster,
        TASKS,
        Instant::now() + Duration::from_secs(60),
        "not every task complete",
    );
    let audit = run.audit(TASKS);
    assert_eq!(
        (audit.lost, audit.injected, audit.attempts),
        (0, 0, audit.steps),
        "each step ran once"
    );
    eprintln!(
        "rolling restart: 3 instances stopped with SIGTERM in turn, draining in {:?}; {} tasks \
         and {} steps Complete with {} attempts, none lost",
        drains, audit.tasks, audit.steps, audit.attempts
    );
    run.finish(cluster);
}
