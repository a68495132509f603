//! Paging of listings. `/v1` listings carry `next_offset` in their bodies. The compatibility
//! surfaces keep their seeds' bodies (whole lists there) and page them here: at most `limit`
//! entries (default and most [`COMPAT_PAGE`]) from `offset`, newest first, with where the next page
//! starts in the `X-Next-Offset` header and a `Link: <…>; rel="next"`.

use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};
use serde::Deserialize;
use utoipa::IntoParams;

/// The most entries a compatibility listing answers at once.
pub const COMPAT_PAGE: usize = 1000;
/// The most entries a listing skips: deeper pages cost Redis more, and nobody pages that far by hand.
pub const MAX_OFFSET: usize = 10_000_000;

/// `?limit=&offset=` of a compatibility listing.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// At most this many (1 to 1000, default 1000).
    pub limit: Option<usize>,
    /// Skip this many, newest first: the `X-Next-Offset` of the page before.
    pub offset: Option<usize>,
}

impl PageQuery {
    pub fn window(&self) -> Window {
        Window::new(self.offset, self.limit, COMPAT_PAGE)
    }
}

/// Where a page starts and how long it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub offset: usize,
    pub limit: usize,
}

impl Window {
    /// `limit` within 1 to `most` (default `most`), `offset` within [`MAX_OFFSET`].
    pub fn new(offset: Option<usize>, limit: Option<usize>, most: usize) -> Window {
        Window {
            offset: offset.unwrap_or(0).min(MAX_OFFSET),
            limit: limit.unwrap_or(most).clamp(1, most),
        }
    }

    /// How many entries to read: one more than the page, to know whether more follow.
    pub fn to_read(self) -> usize {
        self.limit + 1
    }

    /// The page of what was read, and where the next one starts, if there is one.
    pub fn cut<T>(self, mut entries: Vec<T>) -> (Vec<T>, Option<usize>) {
        let more = entries.len() > self.limit;
        entries.truncate(self.limit);
        (entries, more.then_some(self.offset + self.limit))
    }
}

/// A 200 whose headers lead to the next page, if there is one.
pub fn ok_paged(req: &HttpRequest, window: Window, next: Option<usize>) -> HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    if let Some(next) = next {
        response.insert_header(("X-Next-Offset", next.to_string()));
        let link = format!(
            "<{}?offset={next}&limit={}>; rel=\"next\"",
            req.path(),
            window.limit
        );
        response.insert_header((actix_web::http::header::LINK, link));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_bounded_and_lead_on() {
        assert_eq!(
            Window::new(None, None, 1000),
            Window {
                offset: 0,
                limit: 1000
            }
        );
        assert_eq!(Window::new(Some(usize::MAX), Some(0), 1000).limit, 1);
        assert_eq!(
            Window::new(Some(usize::MAX), Some(0), 1000).offset,
            MAX_OFFSET
        );
        let window = Window::new(Some(4), Some(2), 1000);
        assert_eq!(window.cut(vec![1, 2, 3]), (vec![1, 2], Some(6)));
        assert_eq!(window.cut(vec![1, 2]), (vec![1, 2], None));
    }
}
