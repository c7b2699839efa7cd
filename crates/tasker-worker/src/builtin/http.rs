//! The `http` handler.

use std::{fmt, time::Duration};

use async_trait::async_trait;
use reqwest::{
    header::{HeaderName, HeaderValue},
    Method,
};
use serde::{
    de::{self, DeserializeSeed, MapAccess, Visitor},
    Deserialize, Deserializer,
};
use serde_json::{json, Value};

use crate::{config, read_config, ConfigProblem, StepFailure, StepHandler, StepInput};

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

/// The config `http` accepts. `url` and `body` are rendered at run time (placeholders allowed);
/// `method` and `headers` are used as given, so they are checked in full.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpConfig {
    #[serde(deserialize_with = "config::required")]
    url: String,
    /// `POST` when absent.
    #[serde(default, deserialize_with = "config::optional")]
    method: Option<Method>,
    body: Option<Value>,
    #[serde(default)]
    headers: Headers,
    #[serde(default, deserialize_with = "config::optional")]
    timeout_ms: Option<u64>,
}

/// Any method name, in any case (`post` is `POST`).
impl config::Kind for Method {
    const WHAT: &'static str = "an HTTP method such as GET or POST";

    fn from_value(value: Value) -> Result<Self, Value> {
        match value.as_str().filter(|s| !s.is_empty()) {
            Some(name) => Method::from_bytes(name.to_uppercase().as_bytes()).map_err(|_| value),
            None => Err(value),
        }
    }
}

/// Request headers, each checked as a header name and value (`null` means none).
#[derive(Debug, Default)]
struct Headers(Vec<(HeaderName, HeaderValue)>);

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Map;
        impl<'de> Visitor<'de> for Map {
            type Value = Headers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of header names to strings")
            }

            fn visit_unit<E: de::Error>(self) -> Result<Headers, E> {
                Ok(Headers::default())
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Headers, A::Error> {
                let mut headers = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    // Read as the entry's value, so a bad name is reported at `headers.<name>`.
                    headers.push(map.next_value_seed(Header(name))?);
                }
                Ok(Headers(headers))
            }
        }
        d.deserialize_any(Map)
    }
}

/// One header, named by its key.
struct Header(String);

impl<'de> DeserializeSeed<'de> for Header {
    type Value = (HeaderName, HeaderValue);

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let name = HeaderName::from_bytes(self.0.as_bytes())
            .map_err(|_| de::Error::custom("not a valid header name"))?;
        let value = Value::deserialize(d)?;
        let header = value
            .as_str()
            .and_then(|text| HeaderValue::from_str(text).ok())
            .ok_or_else(|| config::expected("a string of visible ASCII", &value))?;
        Ok((name, header))
    }
}

#[async_trait]
impl StepHandler for Http {
    fn check_config(&self, config: &Value) -> Result<(), ConfigProblem> {
        read_config::<HttpConfig>(config).map(drop)
    }

    async fn call(&self, input: StepInput) -> Result<Value, StepFailure> {
        let config: HttpConfig = config::load("http", &input.config)?;
        let method = config.method.unwrap_or(Method::POST);
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
        for (name, value) in &config.headers.0 {
            request = request.header(name, value);
        }
        if method != Method::GET && method != Method::HEAD {
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
    async fn method_and_headers_are_sent_as_configured() {
        let (url, seen) = serve_once(200, "done").await;
        let out = Http::default()
            .call(input(
                json!({"url": url, "method": "put", "headers": {"X-Order": "7", "accept": "text/plain"}}),
            ))
            .await
            .unwrap();
        assert_eq!(out, json!("done"));
        let request = seen.await.unwrap().to_ascii_lowercase();
        assert!(request.starts_with("put /hook"), "{request}");
        assert!(request.contains("\r\nx-order: 7\r\n"), "{request}");
        assert!(request.contains("\r\naccept: text/plain\r\n"), "{request}");
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
