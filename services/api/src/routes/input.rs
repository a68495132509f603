//! Reading request input so that every refusal names the field: JSON bodies ([`parse_json`]) and
//! query strings ([`Query`], in place of actix's, which answers in plain text without the field).

use std::future::{ready, Ready};

use actix_web::{FromRequest, HttpRequest};
use serde::de::DeserializeOwned;
use spot_shared::Error;

use crate::error::ApiError;

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
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(shape_error)?;
    deserializer.end().map_err(|e| {
        Error::invalid(
            "body",
            format!("trailing characters after the JSON value: {e}"),
        )
    })?;
    Ok(value)
}

/// Reads an already parsed JSON value (one element of a batch) into `T`; the field an error names
/// starts with `prefix` (`jobs[3].`).
pub(crate) fn parse_value<T: DeserializeOwned>(
    value: serde_json::Value,
    prefix: &str,
) -> Result<T, Error> {
    if !value.is_object() {
        return Err(Error::invalid(
            prefix.trim_end_matches('.'),
            "must be a JSON object",
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let mut err = shape_error(err);
        err.field = Some(match err.field.as_deref() {
            None | Some("body") => prefix.trim_end_matches('.').to_string(),
            Some(field) => format!("{prefix}{field}"),
        });
        err
    })
}

/// A deserialization error as a 400 naming the field: the path where it failed, or the field a
/// "missing field" / "unknown field" message names.
fn shape_error(err: serde_path_to_error::Error<serde_json::Error>) -> Error {
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
    let field = if path == "." || path.is_empty() {
        field_in_message(&message).unwrap_or_else(|| "body".to_string())
    } else {
        path
    };
    Error::invalid(field, message)
}

/// The first backquoted name in a serde message ("missing field `schedule`"), if not empty.
fn field_in_message(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string()).filter(|name| !name.is_empty())
}

/// The query string parsed into `T`; a refusal is the api's JSON error naming the parameter.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T> std::ops::Deref for Query<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: DeserializeOwned> FromRequest for Query<T> {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(
            parse_query(req.query_string())
                .map(Query)
                .map_err(ApiError::from),
        )
    }
}

/// Parses a query string into `T`, naming the offending parameter.
pub(crate) fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, Error> {
    let deserializer =
        serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let message = err.into_inner().to_string();
        let field = if path == "." || path.is_empty() {
            field_in_message(&message).unwrap_or_else(|| "query".to_string())
        } else {
            path
        };
        Error::invalid(field, message)
    })
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
        let err = parse_json::<Body>(br#"{"name": "x", "": 1}"#).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("body"));
        assert!(parse_json::<Body>(br#"{"name": "x"}"#).is_ok());
    }

    #[test]
    fn a_batch_element_errors_name_the_field_within_the_batch() {
        let field =
            |value: serde_json::Value| parse_value::<Body>(value, "jobs[3].").unwrap_err().field;
        assert_eq!(
            field(serde_json::json!({"items": []})).as_deref(),
            Some("jobs[3].name")
        );
        assert_eq!(
            field(serde_json::json!({"name": "x", "items": [1]})).as_deref(),
            Some("jobs[3].items[0]")
        );
        assert_eq!(field(serde_json::json!([1])).as_deref(), Some("jobs[3]"));
        assert!(parse_value::<Body>(serde_json::json!({"name": "x"}), "jobs[0].").is_ok());
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Params {
        count: Option<u32>,
        follow: Option<bool>,
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let err = parse_query::<Params>("count=-1").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("count"));
        let err = parse_query::<Params>("follow=null").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("follow"));
        let err = parse_query::<Params>("=1").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("query"));
        let err = parse_query::<Params>("count=1&colour=red").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("colour"));
        let params = parse_query::<Params>("count=3&follow=true").unwrap();
        assert_eq!((params.count, params.follow), (Some(3), Some(true)));
    }
}
