//! The web dashboard, served at `/` beside the API: tasks, a task's live DAG, the executor
//! pools and the cluster, templates and dead letters.
//!
//! Pages are HTML rendered on the server (maud) from the same store queries and engine
//! snapshots the API answers with; one small script (`assets/app.js`, no library) makes them
//! live and sends the operator actions to the API. Everything is compiled into the binary.
//!
//! Authentication is the API's: with a token configured, a page asks for it (`/login`) and
//! keeps it in an `HttpOnly`, `SameSite=Lax` cookie that the API accepts as well as the
//! bearer header (see [`crate::authenticate`]). Lax, so that a link to a page opened from
//! another site works; a write on the cookie must carry [`DASHBOARD_HEADER`], which only this
//! site's script sends.

mod dead_letters;
mod graph;
pub mod layout;
mod pools;
mod tasks;
mod templates;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::{
    extract::{Query, Request, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::get,
    Form, Router,
};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use tasker_types::{StepState, TaskState, UnixMillis};

use crate::{error::ApiError, AppState};

/// The cookie holding the dashboard's token.
pub(crate) const TOKEN_COOKIE: &str = "tasker_token";
/// The header the dashboard's script sends with every write it makes on the cookie's
/// authority. A cross-site page cannot set it without a CORS preflight, which is never
/// granted, so a forged form post is refused (see [`crate::authenticate`]).
pub(crate) const DASHBOARD_HEADER: &str = "x-tasker-dashboard";

const APP_CSS: &str = include_str!("assets/app.css");
const APP_JS: &str = include_str!("assets/app.js");

/// The dashboard's routes. The pages require the token when one is configured; the sign-in
/// form and the two assets do not.
pub(crate) fn router(state: AppState) -> Router<AppState> {
    let pages = Router::new()
        .route("/", get(tasks::list))
        .route("/tasks/{id}", get(tasks::show))
        .route("/tasks/{id}/steps/{step}", get(tasks::step_panel))
        .route("/pools", get(pools::show))
        .route("/templates", get(templates::list))
        .route("/templates/{namespace}/{name}", get(templates::show))
        .route("/dead-letters", get(dead_letters::list))
        .route("/dead-letters/{id}", get(dead_letters::show))
        .route_layer(middleware::from_fn_with_state(state, gate));
    Router::new()
        .merge(pages)
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/assets/app.css", get(|| asset(APP_CSS, "text/css")))
        .route("/assets/app.js", get(|| asset(APP_JS, "text/javascript")))
        .layer(middleware::map_response(guard_pages))
}

/// Pages load only this server's own stylesheet and script, and no other site may frame
/// them (clickjacking the action buttons).
async fn guard_pages(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // The assets change only with the binary; an hour is plenty and a restart shows a
            // new version soon enough.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        body,
    )
        .into_response()
}

/// Lets a page through when no token is configured or the request carries it; otherwise
/// answers 401 with the login form, so a browser shows it in place.
async fn gate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match &state.config.auth_token {
        Some(expected) if crate::credentials_match(request.headers(), expected).is_none() => {
            let next_path = request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            let mut response = login_form(&next_path, None).into_response();
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
        }
        _ => next.run(request).await,
    }
}

#[derive(Debug, Default, Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_page(Query(q): Query<LoginQuery>) -> Markup {
    login_form(&safe_next(q.next.as_deref()), None)
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

/// Checks the token typed in and, when right, keeps it in the cookie and goes on to the page
/// that asked for it.
async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(form.next.as_deref());
    let Some(expected) = &state.config.auth_token else {
        return Redirect::to(&next).into_response();
    };
    if !crate::token_matches(&form.token, expected) {
        let mut response = login_form(
            &next,
            Some("That token is not the one this server was given."),
        )
        .into_response();
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        return response;
    }
    let cookie = format!(
        "{TOKEN_COOKIE}={}; Path=/; HttpOnly; SameSite=Lax",
        hex_encode(form.token.as_bytes())
    );
    let mut response = Redirect::to(&next).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("tasker_token=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    );
    response
}

/// A page of this site to go on to: a path, never another origin (`//host` or a scheme).
fn safe_next(next: Option<&str>) -> String {
    match next {
        // Browsers drop tabs and newlines from a URL and read `\` as `/`: none may hide a
        // second slash.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n
                    .chars()
                    .any(|c| c == '\\' || c.is_control() || c.is_whitespace()) =>
        {
            n.to_owned()
        }
        _ => "/".to_owned(),
    }
}

fn login_form(next: &str, error: Option<&str>) -> Markup {
    shell(
        "Sign in",
        Nav::None,
        html! {
            section.login {
                h1 { "Sign in to Tasker" }
                p { "This server requires its API token (" code { "TASKER_API_TOKEN" } ")." }
                @if let Some(error) = error {
                    p.error role="alert" { (error) }
                }
                form method="post" action="/login" {
                    input type="hidden" name="next" value=(next);
                    label for="token" { "API token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                    button type="submit" { "Sign in" }
                }
            }
        },
    )
}

/// The token as cookie-safe text: a token may hold any character, a cookie value may not.
pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of [`hex_encode`]'s text; `None` for anything else.
pub(crate) fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The dashboard token from the `Cookie` header, if any.
pub(crate) fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .and_then(|(_, value)| hex_decode(value))
        .and_then(|bytes| String::from_utf8(bytes).ok())
}

/// Which part of a page a request wants: the whole page, or (for the script's refreshes)
/// only its `<main>`, or the live part of a task page.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Part {
    part: Option<String>,
}

impl Part {
    fn is(&self, name: &str) -> bool {
        self.part.as_deref() == Some(name)
    }
}

/// The navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nav {
    None,
    Tasks,
    Pools,
    Templates,
    DeadLetters,
}

/// A whole page, or its `<main>` alone when the script refreshes it.
fn page(part: &Part, title: &str, nav: Nav, refresh_ms: Option<u64>, body: Markup) -> Markup {
    if part.is("main") {
        return body;
    }
    shell(
        title,
        nav,
        html! {
            main #main data-refresh-ms=[refresh_ms] { (body) }
        },
    )
}

fn shell(title: &str, nav: Nav, content: Markup) -> Markup {
    let link = |href: &str, label: &str, this: Nav| {
        html! {
            a href=(href) aria-current=[(nav == this).then_some("page")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Tasker" }
                link rel="stylesheet" href=(format!("/assets/app.css?v={}", env!("CARGO_PKG_VERSION")));
                script src=(format!("/assets/app.js?v={}", env!("CARGO_PKG_VERSION"))) defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "Tasker" }
                    @if nav != Nav::None {
                        nav {
                            (link("/", "Tasks", Nav::Tasks))
                            (link("/pools", "Pools", Nav::Pools))
                            (link("/templates", "Templates", Nav::Templates))
                            (link("/dead-letters", "Dead letters", Nav::DeadLetters))
                        }
                        form.logout method="post" action="/logout" {
                            button type="submit" title="Forget the token in this browser" { "Sign out" }
                        }
                    }
                }
                (content)
                dialog #confirm {
                    form method="dialog" {
                        p #confirm-text {}
                        menu {
                            button value="cancel" { "Cancel" }
                            button #confirm-ok value="ok" { "Confirm" }
                        }
                    }
                }
                div #toast role="status" aria-live="polite" {}
            }
        }
    }
}

/// A page-sized error: the API's error, as HTML.
pub(crate) fn error_page(error: &ApiError) -> Response {
    let body = shell(
        "Error",
        Nav::Tasks,
        html! {
            main #main {
                section.error-page {
                    h1 { (error.status.as_u16()) " " (error.status.canonical_reason().unwrap_or("")) }
                    p { (error.message) }
                    p { a href="/" { "Back to tasks" } }
                }
            }
        },
    );
    (error.status, body).into_response()
}

/// Wraps a page handler's result: errors become HTML pages.
pub(crate) type PageResult = Result<Markup, PageError>;

/// An [`ApiError`] that renders as a page.
#[derive(Debug)]
pub(crate) struct PageError(ApiError);

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        error_page(&self.0)
    }
}

/// `?a=b&c=d`, percent-encoded (the `form` serializer axum already uses).
pub(crate) fn encode_query(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let mut out = String::from("?");
    out.push_str(&serde_urlencoded::to_string(pairs).unwrap_or_default());
    out
}

/// A path segment, percent-encoded (step names of mapped instances hold `[` and `]`).
pub(crate) fn encode_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Milliseconds since the epoch, now.
pub(crate) fn now_ms() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A time as `2026-11-29 19:01:02` UTC.
pub(crate) fn when(ms: Option<UnixMillis>) -> String {
    ms.and_then(|ms| u64::try_from(ms).ok())
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
        .map_or_else(
            || "—".to_owned(),
            |t| {
                humantime::format_rfc3339_seconds(t)
                    .to_string()
                    .replace('T', " ")
                    .trim_end_matches('Z')
                    .to_owned()
            },
        )
}

/// A time of day with milliseconds, `19:01:02.345` UTC, for rows whose date is known.
pub(crate) fn clock(ms: UnixMillis) -> String {
    u64::try_from(ms)
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
        .map_or_else(
            |_| "—".to_owned(),
            |t| {
                let text = humantime::format_rfc3339_millis(t).to_string();
                text.get(11..23).unwrap_or(&text).to_owned()
            },
        )
}

/// A duration for people: `850 ms`, `12.3 s`, `4m 05s`, `3h 12m`, `2d 4h`.
pub(crate) fn span(ms: i64) -> String {
    let ms = ms.max(0);
    let s = ms / 1000;
    match ms {
        0..1000 => format!("{ms} ms"),
        1000..60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m {:02}s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// A state badge: a symbol and the name, so the state reads without its colour.
pub(crate) fn task_badge(state: TaskState) -> Markup {
    let (symbol, tone) = match state {
        TaskState::Complete => ("✓", "ok"),
        TaskState::Error => ("✗", "bad"),
        TaskState::Cancelled => ("⊘", "muted"),
        TaskState::ResolvedManually => ("☑", "ok"),
        TaskState::Pending => ("○", "idle"),
        _ => ("▶", "busy"),
    };
    html! { span class=(format!("badge {tone}")) { span aria-hidden="true" { (symbol) } " " (state.as_str()) } }
}

/// The symbol and tone of a step state (shared by badges and graph nodes).
pub(crate) fn step_look(state: StepState) -> (&'static str, &'static str) {
    match state {
        StepState::Pending => ("○", "idle"),
        StepState::Enqueued => ("◔", "queued"),
        StepState::InProgress => ("▶", "busy"),
        StepState::WaitingForRetry => ("↻", "retry"),
        StepState::Complete => ("✓", "ok"),
        StepState::Error => ("✗", "bad"),
        StepState::Cancelled => ("⊘", "muted"),
        StepState::ResolvedManually => ("☑", "ok"),
        StepState::Skipped => ("↷", "skipped"),
        StepState::Mapped => ("▦", "busy"),
    }
}

pub(crate) fn step_badge(state: StepState) -> Markup {
    let (symbol, tone) = step_look(state);
    html! { span class=(format!("badge {tone}")) { span aria-hidden="true" { (symbol) } " " (state.as_str()) } }
}

/// Pretty JSON in a `<pre>`.
pub(crate) fn json_block(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    html! { pre.json { (text) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_survive_the_cookie_and_bad_cookies_are_ignored() {
        for token in ["s3cret", "with space; and=signs", "ünïcode", ""] {
            let mut headers = HeaderMap::new();
            let cookie = format!("a=b; {TOKEN_COOKIE}={}; c=d", hex_encode(token.as_bytes()));
            headers.insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
            assert_eq!(cookie_token(&headers).as_deref(), Some(token));
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("tasker_token=zz"));
        assert_eq!(cookie_token(&headers), None);
        assert_eq!(cookie_token(&HeaderMap::new()), None);
    }

    #[test]
    fn links_are_percent_encoded() {
        assert_eq!(encode_segment("charge[12]"), "charge%5B12%5D");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(
            encode_query(&[("version", "1.0.0+b1"), ("queue", "a&b")]),
            "?version=1.0.0%2Bb1&queue=a%26b"
        );
        assert_eq!(encode_query(&[]), "");
    }

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/tasks/4?x=1")), "/tasks/4?x=1");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "tasks",
            "/\t/evil.example",
            "/\n/x",
            "/ /x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn clock_is_the_time_of_day() {
        assert_eq!(clock(1_764_442_862_345), "19:01:02.345");
        assert_eq!(when(Some(1_764_442_862_345)), "2025-11-29 19:01:02");
        assert_eq!(when(None), "—");
    }

    #[test]
    fn spans_read_naturally() {
        assert_eq!(span(850), "850 ms");
        assert_eq!(span(12_345), "12.3 s");
        assert_eq!(span(245_000), "4m 05s");
        assert_eq!(span(3 * 3_600_000 + 12 * 60_000), "3h 12m");
        assert_eq!(span(2 * 86_400_000 + 4 * 3_600_000), "2d 4h");
        assert_eq!(span(-5), "0 ms");
    }
}
