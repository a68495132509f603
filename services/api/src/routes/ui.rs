//! The dashboard at `/ui`: one page and its two assets, compiled into the api (no CDN, nothing fetched
//! at run time). Assets live under a path that names their version (`/ui/assets/{version}/app.js`),
//! so a browser may keep them for a year and an upgraded api is never served stale files. The page
//! itself holds no data: the script asks the api with the key the user signed in with, which stays in
//! the tab's `sessionStorage` and never enters a URL.

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{web, HttpResponse};

const INDEX: &str = include_str!("../../ui/index.html");
const SCRIPT: &str = include_str!("../../ui/app.js");
const STYLE: &str = include_str!("../../ui/app.css");

/// The assets' version: the crate's version and a digest of their bytes (a change to either file
/// makes a new path, even within one release).
pub static VERSION: LazyLock<String> = LazyLock::new(|| {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(SCRIPT)
        .chain_update(STYLE)
        .finalize();
    let short: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{}-{short}", env!("CARGO_PKG_VERSION"))
});

/// Scripts and styles from this origin only, no inline code, no framing, requests to the api only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ui", web::get().to(index))
        .route("/ui/", web::get().to(index))
        .route("/ui/assets/{version}/{file}", web::get().to(asset));
}

fn secured(mut response: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    response
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"));
    response
}

async fn index() -> HttpResponse {
    secured(HttpResponse::Ok())
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(INDEX.replace("{{VERSION}}", &VERSION))
}

async fn asset(path: web::Path<(String, String)>) -> HttpResponse {
    let (version, file) = path.into_inner();
    let body = match file.as_str() {
        "app.js" => Some(("text/javascript; charset=utf-8", SCRIPT)),
        "app.css" => Some(("text/css; charset=utf-8", STYLE)),
        _ => None,
    };
    match body {
        Some((content_type, body)) if version == *VERSION => secured(HttpResponse::Ok())
            .content_type(content_type)
            .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
            .body(body),
        _ => HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("no such asset in this version of the dashboard"),
    }
}
