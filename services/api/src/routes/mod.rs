//! The routes, one module per surface.

mod agent;
mod callback;
mod cronjob;
mod health;
mod hrm;
pub mod metrics;
mod minion;
pub mod openapi;
mod operations;
mod resources;
mod simple;

use actix_web::{web, HttpResponse};
use serde::de::DeserializeOwned;
use serde_json::json;
use spot_shared::Error;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthcheck", web::get().to(health::healthcheck))
        .route("/schedule", web::post().to(simple::schedule))
        .route("/list", web::get().to(simple::list))
        .route("/status/{id}", web::get().to(simple::status))
        .route("/callback", web::post().to(callback::callback))
        .route("/agent/runs/{run_id}", web::get().to(agent::spec))
        .route(
            "/agent/runs/{run_id}/logs",
            web::post().to(agent::append_logs),
        )
        .route(
            "/agent/runs/{run_id}/heartbeat",
            web::post().to(agent::heartbeat),
        )
        .route("/openapi.json", web::get().to(openapi::document))
        .route("/metrics", web::get().to(metrics::metrics))
        .configure(minion::configure)
        .route("/JobScheduler", web::post().to(operations::operation))
        .configure(cronjob::configure)
        .configure(hrm::configure)
        .configure(resources::configure)
        .default_service(web::to(not_found));
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({
        "status": "error",
        "error": "not_found",
        "message": "no such route",
    }))
}

/// Parses a JSON body into `T`, naming the offending field when the shape is wrong.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid("body", "a JSON object is required"));
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => Error::invalid("body", "must be a JSON object"),
                Err(err) => Error::invalid("body", format!("not valid JSON: {err}")),
            },
        );
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return Error::invalid("body", format!("not valid JSON: {inner}"));
        }
        // serde names missing and unknown fields in its message; strip its position suffix.
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_string();
        let field = if path == "." {
            field_in_message(&message).unwrap_or_else(|| "body".to_string())
        } else {
            path
        };
        Error::invalid(field, message)
    })?;
    deserializer.end().map_err(|e| {
        Error::invalid(
            "body",
            format!("trailing characters after the JSON value: {e}"),
        )
    })?;
    Ok(value)
}

/// The first backquoted name in a serde message ("missing field `schedule`").
fn field_in_message(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        items: Option<Vec<String>>,
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse_json::<Body>(br#"{"items": []}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("name"));
        let err = parse_json::<Body>(br#"{"name": "x", "items": [1]}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("items[0]"));
        let err = parse_json::<Body>(br#"{"name": "x", "nmae": 1}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("nmae"));
        let err = parse_json::<Body>(b"schedule=now").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("body"));
        let err = parse_json::<Body>(b"[1]").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("body"));
        let err = parse_json::<Body>(b"").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("body"));
        assert!(parse_json::<Body>(br#"{"name": "x"}"#).is_ok());
    }
}
