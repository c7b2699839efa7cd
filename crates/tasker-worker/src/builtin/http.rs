//! The `http` handler.

use std::{collections::BTreeMap, time::Duration};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{StepFailure, StepHandler, StepInput};

/// `http`: calls an HTTP endpoint.
///
/// Config: `url` (required), `method` (default `POST`), `body` (JSON, rendered against
/// `{{ context.… }}` and `{{ parents.… }}`; default `{"context": …, "parents": …}`), `headers`,
/// `timeout_ms` (default 30 s). A 2xx answer succeeds with its body (JSON when it parses, else
/// text); 5xx, 429, timeouts and connection failures are retryable; other 4xx are permanent.
/// Plain `http://` only: this build carries no TLS stack.
///
/// ```yaml
/// - name: charge
///   handler:
///     name: http
///     config: {method: POST, url: "http://127.0.0.1:9000/charge", body: {order: "{{ context.order_id }}"}}
/// ```
#[derive(Debug, Default)]
pub struct Http {
    client: reqwest::Client,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpConfig {
    url: String,
    #[serde(default = "post")]
    method: String,
    body: Option<Value>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    timeout_ms: Option<u64>,
}

fn post() -> String {
    "POST".into()
}

#[async_trait]
impl StepHandler for Http {
    fn check_config(&self, config: &Value) -> Result<(), crate::ConfigProblem> {
        crate::read_config::<HttpConfig>(config).map(|_| ())
    }

    async fn call(&self, input: StepInput) -> Result<Value, StepFailure> {
        let config: HttpConfig = crate::read_config(&input.config)
            .map_err(|e| StepFailure::permanent(format!("http handler config: {e}")))?;
        let method =
            reqwest::Method::from_bytes(config.method.to_uppercase().as_bytes()).map_err(|_| {
                StepFailure::permanent(format!("http handler: bad method {:?}", config.method))
            })?;
        let scope = super::scope(&input);
        let body = match &config.body {
            Some(template) => crate::render(template, &scope),
            None => json!({"context": input.context, "parents": input.parents}),
        };
        let url = match crate::render(&Value::String(config.url.clone()), &scope) {
            Value::String(s) => s,
            other => other.to_string(),
        };
        let mut request = self
            .client
            .request(method.clone(), &url)
            .timeout(Duration::from_millis(config.timeout_ms.unwrap_or(30_000)));
        for (k, v) in &config.headers {
            request = request.header(k, v);
        }
        if method != reqwest::Method::GET && method != reqwest::Method::HEAD {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            let kind = if e.is_timeout() {
                "timed out"
            } else {
                "failed"
            };
            StepFailure::retryable(format!("{method} {url} {kind}: {e}"))
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            StepFailure::retryable(format!("{method} {url}: reading the body: {e}"))
        })?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            return Ok(body);
        }
        let error = format!("{method} {url} answered {status}: {body}");
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Err(StepFailure::retryable(error))
        } else {
            Err(StepFailure::permanent(error))
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A one-shot HTTP server answering `status` with `body`; returns its URL and the request
    /// it received.
    async fn serve_once(
        status: u16,
        body: &'static str,
    ) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0_u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&seen);
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let length = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if seen.len() >= head_end + 4 + length || n == 0 {
                        break;
                    }
                }
            }
            let reply = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(reply.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&seen).into_owned()
        });
        (url, task)
    }

    fn input(config: Value) -> StepInput {
        StepInput {
            config,
            attempt: 1,
            context: json!({"order_id": 7}),
            ..StepInput::default()
        }
    }

    #[tokio::test]
    async fn a_2xx_answer_is_the_output_and_the_body_is_rendered() {
        let (url, seen) = serve_once(200, r#"{"charged": true}"#).await;
        let out = Http::default()
            .call(input(
                json!({"url": url, "body": {"order": "{{ context.order_id }}"}}),
            ))
            .await
            .unwrap();
        assert_eq!(out, json!({"charged": true}));
        let request = seen.await.unwrap();
        assert!(request.starts_with("POST /hook"), "{request}");
        assert!(request.ends_with(r#"{"order":7}"#), "{request}");
    }

    #[tokio::test]
    async fn status_codes_decide_retryability() {
        let (url, _) = serve_once(503, "busy").await;
        assert!(
            Http::default()
                .call(input(json!({"url": url})))
                .await
                .unwrap_err()
                .retryable
        );
        let (url, _) = serve_once(404, "nope").await;
        let err = Http::default()
            .call(input(json!({"url": url})))
            .await
            .unwrap_err();
        assert!(!err.retryable && err.error.contains("404"), "{err:?}");
    }

    #[tokio::test]
    async fn connection_failures_are_retryable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        assert!(
            Http::default()
                .call(input(json!({"url": url})))
                .await
                .unwrap_err()
                .retryable
        );
    }
}
