//! Diagnostics: log lines on stderr (`TASKER_LOG`, default `warn`), and, when an OTLP endpoint
//! is set, the spans of step attempts exported over OTLP/HTTP.
//!
//! Export is off unless `[telemetry] otlp_endpoint` (for `tasker serve`),
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` names a receiver; off,
//! nothing is built: no exporter, no processor thread. On, a batch span processor on its own
//! thread sends the spans that declare a `task_id` field (`step.attempt`), with tasker's events
//! inside them as span events; executor and batch spans, long-lived or one per poll, stay in
//! the logs. `tasker_orchestrator::telemetry` puts every attempt of a task in one trace.
//!
//! The layer and the provider are built by [`layer`] and [`provider`], which the tests use with
//! an in-memory exporter in place of OTLP, so they check the wiring `tasker` runs with.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::{
    trace::{SdkTracerProvider, SpanExporter},
    Resource,
};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::{
    filter::filter_fn, layer::SubscriberExt as _, registry::LookupSpan,
    util::SubscriberInitExt as _, EnvFilter, Layer,
};

/// Where an OTLP/HTTP receiver takes traces, under its base URL.
const TRACES_PATH: &str = "/v1/traces";

/// The installed diagnostics; dropping it (or [`Telemetry::shutdown`]) flushes the spans not
/// yet exported.
#[derive(Debug)]
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs logging to stderr and, when `traces_endpoint` is set, export of spans to it
    /// (a full URL, `…/v1/traces`; see [`traces_endpoint`]).
    ///
    /// # Errors
    ///
    /// An endpoint the exporter cannot use, or a subscriber already installed.
    pub(crate) fn init(traces_endpoint: Option<&str>) -> anyhow::Result<Self> {
        let provider = traces_endpoint.map(otlp_provider).transpose()?;
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(
                EnvFilter::try_from_env("TASKER_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
            );
        tracing_subscriber::registry()
            .with(logs)
            .with(provider.as_ref().map(layer))
            // Counts nothing until a command starts counting (the bench does).
            .with(tasker_store::statements::counter())
            .try_init()
            .context("installing the log subscriber")?;
        if let Some(endpoint) = traces_endpoint {
            eprintln!("tasker: exporting traces over OTLP to {endpoint}");
        }
        Ok(Self { provider })
    }

    /// Exports the spans still buffered and stops the exporter (at most 5 seconds when the
    /// receiver does not answer).
    pub(crate) fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("tasker: telemetry: {error}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The URL spans are sent to, if any: `configured` (`[telemetry] otlp_endpoint`, a base URL)
/// first, then `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is), then
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL); `/v1/traces` is appended to a base URL, as the
/// OpenTelemetry specification says. `env` reads a variable.
pub(crate) fn traces_endpoint(
    configured: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    let base = |url: &str| format!("{}{TRACES_PATH}", url.trim_end_matches('/'));
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if !configured.is_empty() {
        Some(base(configured))
    } else if let Some(url) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        Some(url)
    } else {
        env("OTEL_EXPORTER_OTLP_ENDPOINT").map(|url| base(&url))
    }
}

/// `OTEL_SERVICE_NAME`, else `tasker`.
pub(crate) fn service_name(env: Option<String>) -> String {
    env.filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "tasker".into())
}

/// The provider exporting to an OTLP/HTTP receiver at `endpoint` (protobuf bodies).
fn otlp_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    if endpoint.starts_with("https://") {
        anyhow::bail!(
            "telemetry: {endpoint}: this build of tasker has no TLS; send to a collector over \
             http:// (a local OpenTelemetry Collector can forward over TLS)"
        );
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .with_context(|| format!("telemetry: exporting to {endpoint}"))?;
    Ok(provider(exporter))
}

/// A provider sending spans to `exporter` in batches from a thread of its own, as service
/// [`service_name`].
pub(crate) fn provider(exporter: impl SpanExporter + 'static) -> SdkTracerProvider {
    let name = service_name(std::env::var("OTEL_SERVICE_NAME").ok());
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(name).build())
        .build()
}

/// The layer turning the exported spans (see [`exported`]) into spans of `provider`.
pub(crate) fn layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tasker"))
        .with_filter(filter_fn(exported))
}

/// Spans about one task, that is declaring a `task_id` field (`step.attempt`, at any level:
/// `TASKER_LOG` filters the logs only), and tasker's events down to `debug`, which become events
/// of the exported span they happen in and are dropped elsewhere. Filtering on the metadata
/// alone lets `tracing` decide once per call site.
fn exported(meta: &Metadata<'_>) -> bool {
    if meta.is_span() {
        meta.fields().field("task_id").is_some()
    } else {
        *meta.level() <= Level::DEBUG && meta.target().starts_with("tasker")
    }
}

#[cfg(test)]
mod tests;
