//! The web UI: server-rendered pages (askama templates, auto-escaped), one stylesheet and
//! one script served from the binary, live run pages over server-sent events. People log
//! in with their API token once and then hold a session cookie ([`crate::session`]); every
//! form carries the session's CSRF token. Without a tokens file (loopback only) visiting
//! `/login` signs you in as `local` at once.

mod audit;
mod backfills;
mod bulk;
mod dead_letters;
pub mod layout;
mod pages;
mod requests;
mod schedules;
mod start;
mod time;

use askama::Template;
use axum::Router;
use axum::extract::{Form, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use crate::Server;
use crate::auth::{LOCAL_USER, Role, User};
use crate::session::{self, SESSION_TTL};

pub use time::Zone;

const CSS: &str = include_str!("../../assets/sluice.css");
const JS: &str = include_str!("../../assets/sluice.js");
const ICON: &str = include_str!("../../assets/favicon.svg");

/// What every page says of the browser: only this origin, no frames, no referrer abroad.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<Server> {
    Router::new()
        .route("/", get(pages::home))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/runs", get(pages::runs))
        .route("/runs/new", get(start::page).post(start::start))
        .route("/runs/bulk", get(bulk::preview).post(bulk::apply))
        .route("/runs/{id}", get(pages::run))
        .route("/runs/{id}/events", get(pages::run_events))
        .route("/runs/{id}/cancel", post(pages::cancel))
        .route("/runs/{id}/retry", get(pages::retry_form).post(pages::retry))
        .route("/runs/{id}/jobs/{path}", get(pages::job))
        .route("/runs/{id}/jobs/{path}/mark", post(pages::mark))
        .route("/workflows/{name}/audit", get(audit::page))
        .route("/backfills", get(backfills::list).post(backfills::create))
        .route("/backfills/new", get(backfills::preview))
        .route("/backfills/{id}", get(backfills::show))
        .route("/backfills/{id}/cancel", post(backfills::cancel))
        .route("/schedules", get(schedules::list))
        .route("/schedules/{name}/{action}", post(schedules::change))
        .route("/requests", get(requests::page))
        .route("/dlq", get(dead_letters::list))
        .route("/dlq/replay", post(dead_letters::replay_all))
        .route("/dlq/{id}", get(dead_letters::show))
        .route("/dlq/{id}/replay", post(dead_letters::replay_one))
        .route("/assets/sluice.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/assets/sluice.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .route("/assets/favicon.svg", get(|| async { asset("image/svg+xml", ICON) }))
        .route("/favicon.ico", get(|| async { asset("image/svg+xml", ICON) }))
        .fallback(|| async { PageError::new(StatusCode::NOT_FOUND, "There is no such page here.") })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=300")], body).into_response()
}

/// Security headers on every answer (pages and API alike).
pub async fn security_headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

/// A page failed: it says why, as a page (the API answers JSON instead).
pub struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }
}

impl From<crate::ApiError> for PageError {
    fn from(error: crate::ApiError) -> Self {
        Self { status: error.status, message: error.message }
    }
}

impl From<sluice_client::ClientError> for PageError {
    fn from(error: sluice_client::ClientError) -> Self {
        crate::ApiError::from(error).into()
    }
}

#[derive(Template)]
#[template(path = "message.html")]
pub(crate) struct MessagePage<'a> {
    pub chrome: Chrome,
    pub title: &'a str,
    pub message: &'a str,
    /// Something is on its way: the page looks again by itself.
    pub waiting: bool,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        // The page frame without a session: no user, no actions.
        let chrome = Chrome {
            user: String::new(),
            role: "",
            csrf: String::new(),
            zone: "UTC".into(),
            can_act: false,
            clock: Zone::utc(),
        };
        (self.status, render(&MessagePage { chrome, title, message: &self.message, waiting: false })).into_response()
    }
}

/// Renders a template; a template that cannot render is the server's fault (500).
fn render(template: &impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(error) => {
            tracing::error!(%error, "a page could not be rendered");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be rendered").into_response()
        }
    }
}

/// A signed-in person, from the session cookie; a page asked for without one redirects to
/// the login (which comes back to it).
pub struct Session {
    pub user: User,
    cookie: String,
    zone: Zone,
}

/// What the frame of every page shows.
pub struct Chrome {
    pub user: String,
    pub role: &'static str,
    pub csrf: String,
    pub zone: String,
    pub can_act: bool,
    pub clock: Zone,
}

impl Session {
    pub fn chrome(&self, server: &Server) -> Chrome {
        Chrome {
            user: self.user.name.clone(),
            role: self.user.role.as_str(),
            csrf: server.session_key.csrf(&self.cookie),
            zone: self.zone.name(),
            can_act: self.user.role == Role::Operator,
            clock: self.zone.clone(),
        }
    }

    /// Refuses a form without this session's CSRF token, or from a viewer.
    pub fn may_act(&self, server: &Server, csrf: &str) -> Result<(), PageError> {
        if !server.session_key.csrf_matches(&self.cookie, csrf) {
            return Err(PageError::new(
                StatusCode::FORBIDDEN,
                "the form's CSRF token is missing or not this session's: reload the page and try again",
            ));
        }
        if self.user.role != Role::Operator {
            return Err(PageError::new(
                StatusCode::FORBIDDEN,
                format!("{} is a viewer: acting needs the operator role", self.user.name),
            ));
        }
        Ok(())
    }
}

/// The person a session cookie names, with the role the tokens file gives them now.
pub fn session_user(server: &Server, headers: &HeaderMap) -> Option<(User, String)> {
    let cookies = headers.get(header::COOKIE)?.to_str().ok()?;
    let cookie = session::cookie_value(cookies, session::COOKIE)?;
    let name = server.session_key.verify(cookie, chrono::Utc::now())?;
    let user = match &server.tokens {
        None => (name == LOCAL_USER).then_some(User { name, role: Role::Operator })?,
        Some(tokens) => tokens.by_name(&name)?.clone(),
    };
    Some((user, cookie.to_owned()))
}

impl FromRequestParts<Server> for Session {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, server: &Server) -> Result<Self, Response> {
        let Some((user, cookie)) = session_user(server, &parts.headers) else {
            let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            return Err(Redirect::to(&format!("/login?next={}", encode_component(next))).into_response());
        };
        let zone = parts
            .headers
            .get(header::COOKIE)
            .and_then(|value| value.to_str().ok())
            .and_then(|cookies| session::cookie_value(cookies, time::ZONE_COOKIE))
            .map(Zone::from_cookie)
            .unwrap_or_else(Zone::utc);
        Ok(Self { user, cookie, zone })
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
fn encode_component(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Where a login may send you back to: a path on this server, nothing else.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => path,
        _ => "/",
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    next: &'a str,
    error: Option<&'a str>,
}

#[derive(Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

/// Whether the browser reached the server over HTTPS (through a proxy that says so).
fn over_https(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn signed_in(server: &Server, headers: &HeaderMap, name: &str, next: &str) -> Response {
    let cookie = server.session_key.issue(name, chrono::Utc::now() + SESSION_TTL);
    let set = session::set_cookie(&cookie, SESSION_TTL, over_https(headers));
    let mut response = Redirect::to(next).into_response();
    if let Ok(value) = HeaderValue::from_str(&set) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn login_page(State(server): State<Server>, headers: HeaderMap, Query(query): Query<LoginQuery>) -> Response {
    let next = local_path(query.next.as_deref());
    if server.tokens.is_none() {
        // Loopback only, no tokens: whoever reaches the server is `local`.
        return signed_in(&server, &headers, LOCAL_USER, next);
    }
    render(&LoginPage { next, error: None })
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(State(server): State<Server>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let next = local_path(form.next.as_deref());
    let Some(tokens) = &server.tokens else {
        return signed_in(&server, &headers, LOCAL_USER, next);
    };
    match tokens.user(form.token.trim()) {
        Some(user) => {
            tracing::info!(user = %user.name, "signed in to the UI");
            signed_in(&server, &headers, &user.name, next)
        }
        None => {
            let page = render(&LoginPage { next, error: Some("That token is not known.") });
            (StatusCode::UNAUTHORIZED, page).into_response()
        }
    }
}

/// A form that carries only its CSRF token (the buttons that act).
#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

/// `?request=<id>` (whose answer a page shows) and `?page=<n>`.
#[derive(Deserialize)]
pub(crate) struct RequestQuery {
    pub request: Option<String>,
    pub page: Option<usize>,
    /// A job page's log: which attempt, and the page before which stream sequence.
    pub attempt: Option<u32>,
    pub before: Option<u64>,
}

/// The last 8 characters of an id, enough to tell runs apart on a page.
pub(crate) fn short(id: &impl std::fmt::Display) -> String {
    let id = id.to_string();
    id.get(id.len().saturating_sub(8)..).unwrap_or(&id).to_owned()
}

async fn logout(
    State(server): State<Server>,
    session: Session,
    Form(form): Form<CsrfForm>,
) -> Result<Response, PageError> {
    if !server.session_key.csrf_matches(&session.cookie, &form.csrf) {
        return Err(PageError::new(StatusCode::FORBIDDEN, "the form's CSRF token is missing or not this session's"));
    }
    let mut response = Redirect::to("/login").into_response();
    let cleared = session::set_cookie("", chrono::Duration::zero(), false);
    if let Ok(value) = HeaderValue::from_str(&cleared) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_only_sends_you_back_to_a_path_here() {
        assert_eq!(local_path(Some("/runs?state=failed")), "/runs?state=failed");
        assert_eq!(local_path(Some("//evil.example/")), "/");
        assert_eq!(local_path(Some("https://evil.example/")), "/");
        assert_eq!(local_path(Some("/\\evil.example")), "/");
        assert_eq!(local_path(None), "/");
        assert_eq!(encode_component("/runs?state=failed&x=1"), "/runs%3Fstate%3Dfailed%26x%3D1");
    }
}
