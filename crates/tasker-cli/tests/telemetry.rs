//! `tasker run` with `OTEL_EXPORTER_OTLP_ENDPOINT`, and `tasker serve` with
//! `[telemetry] otlp_endpoint`, send their spans over OTLP/HTTP before they exit, to a stand-in
//! receiver on the loopback interface.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use support::{http_text, root};

/// One request as received: request line, lower-cased headers, body.
#[derive(Debug)]
struct Request {
    line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Answers every request on `stream` with an empty 200 (an empty protobuf message is a valid
/// export response), passing each to `sink`, until the peer closes.
fn serve_connection(stream: TcpStream, sink: &mpsc::Sender<Request>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        // Passed on before the answer, so it is there once the sender has its answer.
        let _ = sink.send(Request {
            line: line.trim_end().to_owned(),
            headers,
            body,
        });
        writer
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
            )
            .unwrap();
    }
}

/// A stand-in OTLP/HTTP receiver on a free loopback port: its address, and what it received.
fn receiver() -> (String, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (sink, requests) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let sink = sink.clone();
            std::thread::spawn(move || serve_connection(stream.unwrap(), &sink));
        }
    });
    (address, requests)
}

/// Checks the requests are OTLP/HTTP protobuf exports of traces; returns their bodies, joined.
fn trace_exports(received: &[Request]) -> Vec<u8> {
    let mut body = Vec::new();
    for request in received {
        assert_eq!(request.line, "POST /v1/traces HTTP/1.1");
        assert!(
            request
                .headers
                .iter()
                .any(|(n, v)| n == "content-type" && v == "application/x-protobuf"),
            "{:?}",
            request.headers
        );
        body.extend_from_slice(&request.body);
    }
    body
}

#[test]
fn run_exports_its_step_attempts_over_otlp_http_before_exiting() {
    let (address, requests) = receiver();
    let out = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args(["run", "examples/templates/diamond.yaml"])
        .current_dir(root())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{address}"))
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env("OTEL_SERVICE_NAME", "tasker-otlp-test")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("TASKER_DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "tasker: exporting traces over OTLP to http://{address}/v1/traces"
        )),
        "{stderr}"
    );
    // The process has exited: everything it sent has arrived.
    let received: Vec<Request> = requests.try_iter().collect();
    assert!(!received.is_empty(), "no export request; stderr:\n{stderr}");
    let body = trace_exports(&received);
    // Protobuf keeps strings as they are: the span name, the step names, the service.
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.matches("step.attempt").count(), 4, "four steps");
    for word in ["start", "left", "right", "join", "tasker-otlp-test"] {
        assert!(text.contains(word), "{word} missing from the export");
    }
}

/// One HTTP/1.1 request to the server; returns the status and the body.
fn http(addr: &str, method: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
    http_text(addr, method, path, content_type, body, None)
}

#[test]
fn serve_exports_to_the_configured_endpoint_and_flushes_on_sigterm() {
    let (address, requests) = receiver();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tasker.toml");
    std::fs::write(
        &config,
        format!("[default.telemetry]\notlp_endpoint = \"http://{address}\"\n"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tasker"))
        .args(["serve", "--bind", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        // The configuration wins over the environment.
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES")
        .env_remove("TASKER_DATABASE_URL")
        .env_remove("TASKER_API_TOKEN")
        .env("TASKER_ENV", "development")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stderr = Vec::new();
    let addr = loop {
        let line = lines.next().expect("serve printed its address").unwrap();
        stderr.push(line.clone());
        if let Some(rest) = line.strip_prefix("tasker: serving http://") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    assert!(
        stderr.contains(&format!(
            "tasker: exporting traces over OTLP to http://{address}/v1/traces"
        )),
        "{stderr:?}"
    );
    let template = std::fs::read_to_string(root().join("examples/templates/diamond.yaml")).unwrap();
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/templates",
        "application/yaml",
        &template,
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/tasks",
        "application/json",
        r#"{"namespace": "demo", "name": "diamond", "context": {}}"#,
    );
    assert_eq!(status, 201, "{body}");
    let task: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = task["id"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = http(&addr, "GET", &format!("/v1/tasks/{id}"), "text/plain", "");
        let task: serde_json::Value = serde_json::from_str(&body).unwrap();
        if task["state"] == "Complete" {
            break;
        }
        assert!(Instant::now() < deadline, "{task}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Usually well before the batch processor's 5 s schedule comes round, so it is the flush on
    // exit that sends the spans.
    let signal = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signal.success());
    let exit = child.wait().unwrap();
    stderr.extend(drain.join().unwrap());
    assert!(exit.success(), "{stderr:?}");
    let received: Vec<Request> = requests.try_iter().collect();
    assert!(
        !received.is_empty(),
        "no export request; stderr:\n{stderr:?}"
    );
    let text = String::from_utf8_lossy(&trace_exports(&received)).into_owned();
    assert_eq!(text.matches("step.attempt").count(), 4, "four steps");
    assert!(text.contains("tasker"));
}
