//! What the CLI's end-to-end tests share: the repository root, a `tasker serve` to start, and
//! plain HTTP/1.1 requests to it.

#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// The repository's root directory.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One HTTP/1.1 request to `addr`, with a bearer `token` when given; returns the status and
/// the body as text.
pub fn http_text(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, String) {
    try_http_text(addr, method, path, content_type, body, token)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`http_text`] to a server that may be down or die mid-request: connection errors and
/// answers that are not HTTP are errors.
pub fn try_http_text(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{auth}connection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let not_http = || std::io::Error::other(format!("not an HTTP answer: {raw:?}"));
    let (head, payload) = raw.split_once("\r\n\r\n").ok_or_else(not_http)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(not_http)?;
    Ok((status, payload.to_owned()))
}

/// A running `tasker serve`, killed on drop.
pub struct Server {
    /// The server process.
    pub child: Child,
    /// Where it listens.
    pub addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(args: &[&str], envs: &[(&str, &str)]) -> Server {
    let data = tempfile::tempdir().unwrap().keep();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .arg("serve")
        .args(["--bind", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .args(args)
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tasker serve");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().expect("serve printed its address").unwrap();
        if let Some(rest) = line.strip_prefix("tasker: serving http://") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Server { child, addr }
}

/// One HTTP/1.1 request; returns status and parsed JSON body (or the text as a JSON string).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let (status, payload) = http_text(addr, method, path, content_type, body, token);
    (
        status,
        serde_json::from_str(&payload).unwrap_or(Value::String(payload)),
    )
}

pub fn post_json(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    http(
        addr,
        "POST",
        path,
        "application/json",
        &body.to_string(),
        None,
    )
}

pub fn get(addr: &str, path: &str) -> Value {
    let (status, body) = http(addr, "GET", path, "application/json", "", None);
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Polls `GET /v1/tasks/{id}` until `done` holds for the task view (30 s at most).
pub fn wait_until(addr: &str, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let task = get(addr, &format!("/v1/tasks/{id}"));
        if done(&task) {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} not {what} in 30 s: {task}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `GET /v1/tasks/{id}` until the task is in `state` (30 s at most).
pub fn wait_for_state(addr: &str, id: i64, state: &str) -> Value {
    wait_until(addr, id, state, |task| task["state"] == state)
}

pub fn register_yaml(addr: &str, yaml: &str) {
    let (status, body) = http(
        addr,
        "POST",
        "/v1/templates",
        "application/yaml",
        yaml,
        None,
    );
    assert_eq!(status, 201, "{body}");
}

pub fn submit(addr: &str, namespace: &str, name: &str) -> i64 {
    let (status, task) = post_json(
        addr,
        "/v1/tasks",
        &json!({"namespace": namespace, "name": name, "context": {}}),
    );
    assert_eq!(status, 201, "{task}");
    task["id"].as_i64().unwrap()
}

pub fn step<'a>(task: &'a Value, name: &str) -> &'a Value {
    task["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name} in {task}"))
}

/// Runs the `tasker` CLI against the server at `addr`, from the repository root; returns the
/// exit code, stdout and stderr.
pub fn tasker(addr: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args(args)
        .env("TASKER_URL", format!("http://{addr}"))
        .current_dir(root())
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs `f` with the URL of a fresh PostgreSQL database on a blocking thread (the servers the
/// CLI tests start are driven with blocking calls), then drops the database.
pub async fn with_postgres(f: impl FnOnce(String) + Send + 'static) {
    let db = tasker_store_postgres::test_database::TestDatabase::create()
        .await
        .unwrap();
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || f(url)).await.unwrap();
    db.drop_database().await.unwrap();
}

/// Submits a task of `namespace/name` with `context`; returns its id.
pub fn submit_context(addr: &str, namespace: &str, name: &str, context: &Value) -> i64 {
    let (status, task) = post_json(
        addr,
        "/v1/tasks",
        &json!({"namespace": namespace, "name": name, "context": context}),
    );
    assert_eq!(status, 201, "{task}");
    task["id"].as_i64().unwrap()
}
