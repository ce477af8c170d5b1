//! The operator page, served by every node at `GET /` (SPEC section 8, "Descriptions
//! and faces").
//!
//! Three static files under `src/api/ui/`, embedded in the binary with
//! `include_str!`: no build step, no framework, nothing fetched from elsewhere. The
//! page itself holds no data, so it is served without a key; it reads the same public
//! API any client does (`/v1/cluster`, `/v1/pool`, `/v1/pool/miners`,
//! `/v1/sessions`, a session's event stream) from the node that served it. When a
//! call answers 401 it asks for the API key, keeps it in the tab's `sessionStorage`
//! and sends it as `Authorization: Bearer`; the event stream, which a browser cannot
//! give headers, carries it as `?key=`, and the page falls back to polling when the
//! stream fails.
//!
//! A strict Content-Security-Policy goes with every file: scripts, styles and
//! connections from this origin only, no inline script, and no framing.

use axum::http::header;
use axum::response::IntoResponse;

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// What every file of the page is sent with.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Small files, and a new binary may bring new ones: always revalidate.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

/// `GET /`: the page.
#[utoipa::path(get, path = "/", tag = "operator", operation_id = "operator_page",
    responses((status = 200, description = "The operator page: members, leader, term, applied index \
        and lag per node, the pool and its scaling signal, sessions with their tasks per state, live \
        throughput. Static, without a key (it asks for the API key when a call answers 401); sent \
        with a strict Content-Security-Policy.",
        body = String, content_type = "text/html",
        headers(
            ("Content-Security-Policy" = String, description = "Scripts, styles and connections from this origin only"),
            ("Cache-Control" = String, description = "`no-cache`"),
        ))))]
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/app.js`: what the page does.
#[utoipa::path(get, path = "/ui/app.js", tag = "operator", operation_id = "operator_page_script",
    responses((status = 200, description = "The operator page's script (static)",
        body = String, content_type = "text/javascript",
        headers(
            ("Content-Security-Policy" = String, description = "Scripts, styles and connections from this origin only"),
            ("Cache-Control" = String, description = "`no-cache`"),
        ))))]
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/style.css`: how it looks.
#[utoipa::path(get, path = "/ui/style.css", tag = "operator", operation_id = "operator_page_style",
    responses((status = 200, description = "The operator page's style sheet (static)",
        body = String, content_type = "text/css",
        headers(
            ("Content-Security-Policy" = String, description = "Scripts, styles and connections from this origin only"),
            ("Cache-Control" = String, description = "`no-cache`"),
        ))))]
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files() {
        assert!(INDEX_HTML.contains("src=\"/ui/app.js\""));
        assert!(INDEX_HTML.contains("href=\"/ui/style.css\""));
        for file in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(!file.contains("http://"), "no external URL");
            assert!(!file.contains("https://"), "no external URL");
        }
        // The CSP forbids inline script: the page must not rely on any.
        assert!(!INDEX_HTML.contains("<script>"));
        let inline_handler = INDEX_HTML
            .split(char::is_whitespace)
            .any(|word| word.starts_with("on") && word.contains("=\""));
        assert!(!inline_handler, "no inline event handlers");
    }
}
