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
pub async fn index() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/app.js`: what the page does.
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /ui/style.css`: how it looks.
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
