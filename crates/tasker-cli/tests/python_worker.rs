//! `examples/workers/python_worker.py` when the server is down: one line per try on stderr, tries
//! again with backoff, no traceback, and with `--exit-when-idle` it gives up with exit code 1.
//! Needs no server.

use std::{
    io::Read,
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A port on 127.0.0.1 with nothing listening: bound by the system, then released.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn an_unreachable_server_gets_retries_not_a_traceback() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let mut child = Command::new("python3")
        .arg(root().join("examples/workers/python_worker.py"))
        .args([
            "--url",
            &url,
            "--namespace",
            "greeting",
            "--exit-when-idle",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the python worker");
    // Read both pipes on their own threads so the worker never blocks on a full one.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });

    // It gives up about 2 s after starting; a bounded wait on its exit.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the worker did not exit within 30 s of --exit-when-idle 2");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");

    assert!(!stderr.contains("Traceback"), "{context}");
    let unreachable: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with(&format!("worker: server {url} unreachable (")))
        .collect();
    assert!(unreachable.len() >= 2, "it did not retry: {context}");
    assert!(
        unreachable[..unreachable.len() - 1]
            .iter()
            .all(|l| l.contains("; retrying in ")),
        "{context}"
    );
    assert!(
        unreachable.last().unwrap().contains("; giving up after"),
        "{context}"
    );
    assert_eq!(
        stderr.lines().count(),
        unreachable.len(),
        "one line per try, nothing else: {context}"
    );
    // 1: it stopped without ever reaching the server (0 is for a worker that ran out of work).
    assert_eq!(status.code(), Some(1), "{context}");
}
