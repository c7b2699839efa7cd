//! The dashboard in a real browser: `tasker serve` on SQLite or PostgreSQL, headless Chromium driven over
//! WebDriver (chromedriver). A workflow with a failing step is watched live, its failed step
//! retried from the page; the pools page shows every executor type; dead letters are requeued
//! and discarded from the page (on PostgreSQL); with a token configured, the pages ask for it. Screenshots of each page go to `<target>/tmp/dashboard-screenshots`.
//!
//! `scripts/test` installs Chromium and chromedriver when they are missing
//! (`TEST_CHROMIUM`, `TEST_CHROMEDRIVER` override where they are).

mod support;

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::{http, register_yaml, serve, submit, wait_for_state};

/// Longest wait for anything the page should show.
const PATIENCE: Duration = Duration::from_secs(30);

/// A headless Chromium session; the driver is killed on drop.
struct Browser {
    client: Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn tool(var: &str, default: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(var).unwrap_or_else(|_| default.to_owned()));
    assert!(
        path.exists(),
        "{} not found: install the Debian packages chromium and chromium-driver \
         (scripts/test does so when it runs as root), or set {var}",
        path.display()
    );
    path
}

async fn browser() -> Browser {
    let chromium = tool("TEST_CHROMIUM", "/usr/bin/chromium");
    let chromedriver = tool("TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,1000"],
        }),
    );
    let started = Instant::now();
    let client = loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => break client,
            Err(e) if started.elapsed() < PATIENCE => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no WebDriver session from chromedriver on port {port}: {e}"),
        }
    };
    Browser { client, driver }
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    let path = screenshots().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Clicks the element `css` selects.
async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// The text of the element `css` selects.
async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Evaluates `script` (a function body that returns a value) in the page.
async fn eval(client: &Client, script: &str) -> Value {
    client.execute(script, vec![]).await.expect("script ran")
}

/// Waits until `script` returns `true`, or fails saying `what`.
async fn until(client: &Client, what: &str, script: &str) {
    let started = Instant::now();
    loop {
        if eval(client, script).await == json!(true) {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{what}: not seen within {PATIENCE:?}; page: {}",
            client.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A script: the state the graph shows for `step`.
fn state_of(step: &str) -> String {
    format!(
        "const n = document.querySelector('.node[data-step=\"{step}\"]'); return n ? n.dataset.state : null;"
    )
}

/// A script: whether the graph shows `step` in `state`.
fn step_is(step: &str, state: &str) -> String {
    format!(
        "const n = document.querySelector('.node[data-step=\"{step}\"]'); return !!n && n.dataset.state === '{state}';"
    )
}

/// Two slow steps and one that fails the first time it runs (a marker file says whether it
/// ran) with no attempt left: the task stops in Error until an operator retries the step.
fn workflow(marker: &std::path::Path) -> String {
    format!(
        r#"namespace: e2e
name: flaky
version: 1.0.0
steps:
  - name: fetch
    handler: {{name: sleep, config: {{ms: 2500}}}}
  - name: transform
    depends_on: [fetch]
    handler: {{name: sleep, config: {{ms: 1500}}}}
  - name: publish
    depends_on: [transform]
    retry: {{max_attempts: 1}}
    handler:
      name: command
      config:
        shell: true
        program: "test -e {marker} || {{ touch {marker}; echo 'upstream said no' >&2; exit 3; }}; echo '{{\"published\": true}}'"
"#,
        marker = marker.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_watched_live_and_its_failed_step_retried_from_the_page() {
    let server = serve(&[], &[]);
    let addr = server.addr.clone();
    let scratch = tempfile::tempdir().unwrap();
    register_yaml(&addr, &workflow(&scratch.path().join("ran-once")));
    let browser = browser().await;
    let c = &browser.client;
    let id = submit(&addr, "e2e", "flaky");

    c.goto(&format!("http://{addr}/tasks/{id}")).await.unwrap();
    let loaded_at = eval(
        c,
        "return window.taskerDashboard && window.taskerDashboard.loadedAt;",
    )
    .await;
    assert!(loaded_at.is_number(), "the script ran: {loaded_at}");
    let first = eval(c, &state_of("fetch")).await;
    assert_ne!(
        first,
        json!("Complete"),
        "fetch takes 2.5 s; the page saw it before"
    );
    screenshot(c, "task-running").await;

    // The steps turn Complete on the open page, from the engine's events: no reload.
    until(c, "fetch Complete", &step_is("fetch", "Complete")).await;
    until(c, "transform Complete", &step_is("transform", "Complete")).await;
    until(c, "publish Error", &step_is("publish", "Error")).await;
    until(
        c,
        "the task in Error",
        "return document.getElementById('task-live').dataset.state === 'Error';",
    )
    .await;

    // The failed step's panel: its error, then retry with a confirmation.
    click(c, ".node[data-step=\"publish\"]").await;
    until(c, "publish's panel", "const p = document.querySelector('#step-panel .step'); return !!p && p.dataset.step === 'publish';").await;
    let panel = text_of(c, "#step-panel").await;
    assert!(
        panel.contains("upstream said no"),
        "the error shows: {panel}"
    );
    assert!(
        panel.contains("fail_permanent"),
        "the transitions show: {panel}"
    );
    screenshot(c, "task-failed-step").await;
    click(c, "#step-panel button[data-action=\"retry\"]").await;
    until(
        c,
        "the confirmation",
        "return document.getElementById('confirm').open;",
    )
    .await;
    click(c, "#confirm-ok").await;

    until(
        c,
        "publish Complete after the retry",
        &step_is("publish", "Complete"),
    )
    .await;
    until(
        c,
        "the task Complete",
        "return document.getElementById('task-live').dataset.state === 'Complete';",
    )
    .await;
    until(c, "the retry in publish's transitions", "const p = document.getElementById('step-panel'); return p.textContent.includes('retry') && !!p.querySelector('.step[data-state=\"Complete\"]');").await;
    assert_eq!(
        eval(c, "return window.taskerDashboard.loadedAt;").await,
        loaded_at,
        "the page was never reloaded"
    );
    screenshot(c, "task").await;

    // The store agrees: publish ran again after the operator's retry and completed.
    let task = wait_for_state(&addr, id, "Complete");
    let publish = support::step(&task, "publish");
    assert_eq!(publish["state"], "Complete");
    assert_eq!(publish["result"], json!({"published": true}));
    let events: Vec<&str> = task["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["step_id"] == publish["id"])
        .map(|t| t["event"].as_str().unwrap())
        .collect();
    assert!(
        events.windows(2).any(|w| w == ["fail_permanent", "retry"]),
        "{events:?}"
    );
    assert_eq!(
        events.iter().filter(|e| **e == "start").count(),
        2,
        "{events:?}"
    );

    // The tasks page lists it with its progress.
    c.goto(&format!("http://{addr}/")).await.unwrap();
    let row = text_of(c, &format!("tr[data-task=\"{id}\"]")).await;
    assert!(row.contains("3/3") && row.contains("Complete"), "{row}");
    screenshot(c, "tasks").await;

    // The pools page shows every executor type of the engine, and the cluster.
    c.goto(&format!("http://{addr}/pools")).await.unwrap();
    for kind in [
        "task_request_processor",
        "task_claimer",
        "step_enqueuer",
        "step_result_processor",
        "task_finalizer",
        "in_process_worker",
    ] {
        c.find(Locator::Css(&format!(
            "section.pool[data-executor-type=\"{kind}\"]"
        )))
        .await
        .unwrap_or_else(|e| panic!("pool {kind} on the page: {e}"));
    }
    let cluster = text_of(c, "section.cluster").await;
    assert!(cluster.contains("leader"), "{cluster}");
    screenshot(c, "pools").await;

    // Templates: the list, and one template's DAG with its steps.
    c.goto(&format!("http://{addr}/templates")).await.unwrap();
    c.find(Locator::LinkText("flaky"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        c,
        "the template's graph",
        "return document.querySelectorAll('svg.dag .node').length === 3;",
    )
    .await;
    let steps = text_of(c, "table.steps").await;
    assert!(
        steps.contains("command") && steps.contains("sleep"),
        "{steps}"
    );
    screenshot(c, "template").await;
    drop(server);
}

/// A template of 1,000 steps (a root, 997 in parallel, a join, and a step mapped over 1,000
/// items): every step is drawn, a live refresh of the page and a step's panel each come back
/// in well under the bound, and the mapped step is one node whose panel lists its instances.
fn thousand_steps() -> String {
    let mut yaml = String::from(
        "namespace: e2e\nname: big\nversion: 1.0.0\nsteps:\n  - name: start\n    handler: {name: echo, config: {value: {items: \"{{ context.items }}\"}}}\n",
    );
    let fan: Vec<String> = (0..997).map(|i| format!("fan{i:03}")).collect();
    for name in &fan {
        yaml.push_str(&format!(
            "  - {{name: {name}, handler: noop, depends_on: [start]}}\n"
        ));
    }
    yaml.push_str(&format!(
        "  - {{name: join, handler: noop, depends_on: [{}]}}\n",
        fan.join(", ")
    ));
    yaml.push_str("  - name: each\n    depends_on: [start, join]\n    map: {over: parents.start.items}\n    handler: noop\n");
    yaml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_step_task_stays_responsive() {
    let server = serve(&[], &[]);
    let addr = server.addr.clone();
    register_yaml(&addr, &thousand_steps());
    let items: Vec<Value> = (0..1000).map(|i| json!(i)).collect();
    let id = support::submit_context(&addr, "e2e", "big", &json!({"items": items}));
    let browser = browser().await;
    let c = &browser.client;
    c.goto(&format!("http://{addr}/tasks/{id}")).await.unwrap();
    assert_eq!(
        eval(
            c,
            "return document.querySelectorAll('svg.dag .node').length;"
        )
        .await,
        json!(1000),
        "999 steps and the mapped one, its instances folded into it"
    );
    until(
        c,
        "the task Complete",
        "return document.getElementById('task-live').dataset.state === 'Complete';",
    )
    .await;
    until(
        c,
        "the mapped node counts its instances",
        &step_is("each", "Complete"),
    )
    .await;
    let detail = eval(
        c,
        "return document.querySelector('.node[data-step=\"each\"] text.detail').textContent;",
    )
    .await;
    assert!(
        detail.as_str().unwrap_or("").contains("✓1000 of 1000"),
        "{detail}"
    );

    // One live refresh as the script does it, timed in the page.
    let refresh_ms = eval(
        c,
        "const t = performance.now(); const r = new XMLHttpRequest(); \
         r.open('GET', location.pathname + '?part=live', false); r.send(); \
         const holder = document.createElement('div'); holder.innerHTML = r.responseText; \
         document.getElementById('task-live').replaceWith(holder.firstElementChild); \
         document.body.offsetHeight; return performance.now() - t;",
    )
    .await;
    let refresh_ms = refresh_ms.as_f64().unwrap();
    eprintln!("1,000-step task: a live refresh took {refresh_ms:.0} ms");
    assert!(refresh_ms < 2000.0, "a refresh took {refresh_ms:.0} ms");

    let opened = Instant::now();
    click(c, ".node[data-step=\"each\"]").await;
    until(
        c,
        "the mapped step's instances",
        "return document.querySelectorAll('#step-panel table.instances tbody tr').length === 500;",
    )
    .await;
    eprintln!(
        "1,000-step task: the mapped step's panel opened in {:?}",
        opened.elapsed()
    );
    let first = eval(c, "return Array.from(document.querySelectorAll('#step-panel [data-open-step]')).slice(0, 3).map(b => b.dataset.openStep);").await;
    assert_eq!(
        first,
        json!(["each[0]", "each[1]", "each[2]"]),
        "in item order"
    );
    click(c, "#step-panel [data-open-step=\"each[7]\"]").await;
    until(c, "an instance's panel", "const p = document.querySelector('#step-panel .step'); return !!p && p.dataset.step === 'each[7]';").await;
    screenshot(c, "task-1000-steps").await;
    drop(server);
}

/// Two task requests among the dead letters, on PostgreSQL, as if they had used up their
/// deliveries while their template was missing. From the page, one is requeued (and becomes
/// a task that completes) and the other discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_requeued_and_discarded_from_the_page() {
    use sqlx::postgres::PgPoolOptions;
    let db = tasker_store_postgres::test_database::TestDatabase::create()
        .await
        .unwrap();
    let server = serve(&["--database-url", &db.url], &[]);
    let addr = server.addr.clone();
    register_yaml(
        &addr,
        "namespace: e2e\nname: late\nversion: 1.0.0\nsteps:\n  - {name: only, handler: noop}\n",
    );
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    for (id, key) in [(900_001_i64, "late-1"), (900_002, "late-2")] {
        sqlx::query(
            "INSERT INTO dead_letters (id, queue, payload, deliveries, enqueued_at_ms, dead_at_ms) \
             VALUES ($1, 'tasker.task_requests', $2, 5, $3, $3)",
        )
        .bind(id)
        .bind(json!({"namespace": "e2e", "name": "late", "context": {}, "idempotency_key": key}))
        .bind(now_ms)
        .execute(&pool)
        .await
        .unwrap();
    }
    let browser = browser().await;
    let c = &browser.client;
    c.goto(&format!("http://{addr}/dead-letters"))
        .await
        .unwrap();
    screenshot(c, "dead-letters").await;
    click(
        c,
        "tr[data-dead-letter=\"900001\"] button[data-action=\"requeue\"]",
    )
    .await;
    until(
        c,
        "the confirmation",
        "return document.getElementById('confirm').open;",
    )
    .await;
    click(c, "#confirm-ok").await;
    until(c, "the requeued one gone from the list", "return !document.querySelector('tr[data-dead-letter=\"900001\"]') && !!document.querySelector('tr[data-dead-letter=\"900002\"]');").await;

    // Requeued, the request is taken up again and makes its task, which runs.
    let started = Instant::now();
    let task = loop {
        let list = support::get(&addr, "/v1/tasks?namespace=e2e&name=late");
        if let Some(task) = list["tasks"].as_array().and_then(|t| t.first()).cloned() {
            break task;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "no task from the requeued request"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    wait_for_state(&addr, task["id"].as_i64().unwrap(), "Complete");

    // The other, from its own page.
    click(c, "a[href=\"/dead-letters/900002\"]").await;
    until(
        c,
        "its page",
        "return document.body.textContent.includes('late-2');",
    )
    .await;
    screenshot(c, "dead-letter").await;
    click(c, "button[data-action=\"discard\"]").await;
    until(
        c,
        "the confirmation",
        "return document.getElementById('confirm').open;",
    )
    .await;
    click(c, "#confirm-ok").await;
    until(c, "the list, empty", "return location.pathname === '/dead-letters' && document.body.textContent.includes('No dead letters');").await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let tasks: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(tasks, 1, "the discarded request made no task");
    pool.close().await;
    drop(browser);
    drop(server);
    db.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_pages_ask_for_it_and_refuse_without_it() {
    let server = serve(&[], &[("TASKER_API_TOKEN", "s3cret token")]);
    let addr = server.addr.clone();
    let (status, body) = http(&addr, "GET", "/", "", "", None);
    assert_eq!(status, 401, "{body}");
    assert!(body.as_str().unwrap_or("").contains("API token"), "{body}");
    let (status, _) = http(&addr, "GET", "/pools?part=main", "", "", None);
    assert_eq!(status, 401);
    let (status, _) = http(&addr, "GET", "/v1/tasks", "", "", None);
    assert_eq!(status, 401);

    let browser = browser().await;
    let c = &browser.client;
    c.goto(&format!("http://{addr}/pools")).await.unwrap();
    let text = text_of(c, "body").await;
    assert!(
        text.contains("Sign in") && !text.contains("task_claimer"),
        "{text}"
    );
    screenshot(c, "login").await;

    // A wrong token is refused, and says so.
    let field = c.find(Locator::Css("#token")).await.unwrap();
    field.send_keys("guess").await.unwrap();
    click(c, ".login button[type=submit]").await;
    until(
        c,
        "the refusal",
        "return document.body.textContent.includes('not the one');",
    )
    .await;

    // The right one opens the page that asked, and the API answers the cookie too.
    let field = c.find(Locator::Css("#token")).await.unwrap();
    field.send_keys("s3cret token").await.unwrap();
    click(c, ".login button[type=submit]").await;
    until(
        c,
        "the pools page",
        "return !!document.querySelector('section.pool[data-executor-type=\"task_claimer\"]');",
    )
    .await;
    let api = eval(
        c,
        "const r = new XMLHttpRequest(); r.open('GET', '/v1/tasks', false); r.send(); return r.status;",
    )
    .await;
    assert_eq!(api, json!(200));
    // A write on the cookie alone, without the dashboard's header, is refused.
    let forged = eval(
        c,
        "const r = new XMLHttpRequest(); r.open('POST', '/v1/tasks/1/cancel', false); r.send(); return r.status;",
    )
    .await;
    assert_eq!(forged, json!(403));

    // Signing out forgets it.
    click(c, ".logout button").await;
    until(
        c,
        "the sign-in form again",
        "return !!document.getElementById('token');",
    )
    .await;
    drop(server);
}
