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
        let field = if path == "." || path.is_empty() {
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
