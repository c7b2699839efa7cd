//! The HTTP client the server-facing commands share (`submit`, `status`, `tasks`, `templates
//! register|list`, `pools`). A refusal's `{"error": {"code", "message"}}` becomes an error
//! naming the status and the message, which `main` prints on stderr before exiting 1.

use anyhow::Context;
use clap::Args;
use serde_json::Value;

/// Where the server is.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServerArgs {
    /// Base URL of `tasker serve`.
    #[arg(
        long,
        env = "TASKER_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub(crate) url: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// A client of the REST API; sends `TASKER_API_TOKEN` as a bearer token when set.
#[derive(Debug)]
pub(crate) struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub(crate) fn new(args: &ServerArgs) -> Self {
        Self {
            base: args.url.trim_end_matches('/').to_owned(),
            token: std::env::var("TASKER_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let request = match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach the tasker server at {} (is `tasker serve` running?)",
                self.base
            )
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]["message"].as_str().unwrap_or("no details");
        anyhow::bail!("server answered {status}: {message}")
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub(crate) async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    pub(crate) async fn post_yaml(&self, path: &str, body: String) -> anyhow::Result<Value> {
        self.send(
            self.http
                .post(format!("{}{path}", self.base))
                .header(reqwest::header::CONTENT_TYPE, "application/yaml")
                .body(body),
        )
        .await
    }
}

/// `text` percent-encoded for a URL path segment or query value: every byte but the
/// unreserved ones (`A-Z a-z 0-9 - . _ ~`).
pub(crate) fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Runs `f` on a fresh runtime.
pub(crate) fn block_on<T>(
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn encode_keeps_unreserved_bytes_only() {
        assert_eq!(encode("step_1-a.b~c"), "step_1-a.b~c");
        assert_eq!(encode("a b/c?d&e=f%"), "a%20b%2Fc%3Fd%26e%3Df%25");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
