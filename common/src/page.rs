//! Pagination of every list of both APIs, as Kuma's API does it: `?size=N&offset=K` (size 1 to
//! [`MAX_SIZE`], [`DEFAULT_SIZE`] when not given; offset a count of items to skip), answered with
//! `{"total": T, "items": [...], "next": URL or null}`, where `next` is the absolute URL of the next
//! page built from the request (scheme, `Host`, path, the query with `offset` moved on), or `null`
//! on the last page. A bad `size` or `offset` is refused naming the parameter. Lists are sorted
//! before they are cut, so pages do not overlap.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

/// Items in a page when the request does not say (Kuma's default).
pub const DEFAULT_SIZE: usize = 100;
/// The largest page a request may ask for (Kuma's maximum).
pub const MAX_SIZE: usize = 1000;

/// A refused `size` or `offset`: the parameter and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {reason}")]
pub struct PageError {
    pub parameter: &'static str,
    pub reason: String,
}

/// The page a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub size: usize,
    pub offset: usize,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            size: DEFAULT_SIZE,
            offset: 0,
        }
    }
}

fn whole_number(
    parameter: &'static str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<usize, PageError> {
    let shown: String = value.chars().take(32).collect();
    let refuse = || PageError {
        parameter,
        reason: if max == usize::MAX {
            format!("{shown:?} is not a whole number of at least {min}")
        } else {
            format!("{shown:?} is not a whole number from {min} to {max}")
        },
    };
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    match value.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(refuse()),
    }
}

impl Page {
    /// The page a raw query string asks for; other parameters are left to the handler.
    pub fn from_query(query: Option<&str>) -> Result<Page, PageError> {
        let mut page = Page::default();
        let (mut size_seen, mut offset_seen) = (false, false);
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let (parameter, seen) = match key.as_ref() {
                "size" => ("size", &mut size_seen),
                "offset" => ("offset", &mut offset_seen),
                _ => continue,
            };
            if *seen {
                return Err(PageError {
                    parameter,
                    reason: "given more than once".into(),
                });
            }
            *seen = true;
            if parameter == "size" {
                page.size = whole_number("size", &value, 1, MAX_SIZE)?;
            } else {
                page.offset = whole_number("offset", &value, 0, usize::MAX)?;
            }
        }
        Ok(page)
    }

    /// Cuts the (sorted) `items` to this page: the total, the page's items, and the offset of the
    /// next page when there is one.
    pub fn cut<T>(&self, items: Vec<T>) -> (usize, Vec<T>, Option<usize>) {
        let total = items.len();
        let end = self.offset.saturating_add(self.size).min(total);
        let page: Vec<T> = items
            .into_iter()
            .skip(self.offset)
            .take(self.size)
            .collect();
        let next = (end < total).then_some(end);
        (total, page, next)
    }
}

/// Whether a request came over TLS: inserted as a request extension by an HTTPS listener so that
/// links the API builds (`next`) name `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverTls;

/// A list request as a handler takes it (an axum extractor): the page asked for and what the
/// `next` link is built from.
#[derive(Debug, Clone)]
pub struct ListRequest {
    pub page: Page,
    scheme: &'static str,
    host: Option<String>,
    path: String,
    query: String,
}

impl ListRequest {
    /// A request for `page` of `path` (tests, and lists answered outside a request).
    pub fn of(path: &str, page: Page) -> Self {
        Self {
            page,
            scheme: "http",
            host: None,
            path: path.to_string(),
            query: String::new(),
        }
    }

    /// The absolute URL of the page at `offset` (the path and query alone without a `Host`):
    /// the request's own query with `offset` set, as Kuma builds it.
    pub fn link(&self, offset: usize) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        let mut offset_set = false;
        for (k, v) in url::form_urlencoded::parse(self.query.as_bytes()) {
            if k == "offset" {
                if !offset_set {
                    query.append_pair("offset", &offset.to_string());
                    offset_set = true;
                }
            } else {
                query.append_pair(&k, &v);
            }
        }
        if !offset_set {
            query.append_pair("offset", &offset.to_string());
        }
        let path_and_query = format!("{}?{}", self.path, query.finish());
        match &self.host {
            Some(host) => format!("{}://{host}{path_and_query}", self.scheme),
            None => path_and_query,
        }
    }

    /// Cuts `items` (sorted) to the page asked for: `(total, items, next)`.
    pub fn cut<T>(&self, items: Vec<T>) -> (usize, Vec<T>, Option<String>) {
        let (total, items, next) = self.page.cut(items);
        (total, items, next.map(|n| self.link(n)))
    }
}

/// The path and query of a `next` link (absolute or not), to ask of the API a client was pointed
/// at: a client follows pages on its own base URL, so its token never goes to a host a link names.
pub fn next_path(next: &str) -> String {
    match next.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => rest[i..].to_string(),
            None => "/".into(),
        },
        None => next.to_string(),
    }
}

/// The `next` link of a list body, when there is a next page.
pub fn next_of(body: &serde_json::Value) -> Option<String> {
    body.get("next")
        .and_then(serde_json::Value::as_str)
        .filter(|n| !n.is_empty())
        .map(next_path)
}

/// Adds the items of a following page to `all` (the first page's body, whose other fields stay)
/// and returns that page's `next` path; `all` ends with `"next": null` once the last is added.
pub fn append_page(all: &mut serde_json::Value, page: serde_json::Value) -> Option<String> {
    let next = next_of(&page);
    if let (Some(items), Some(more)) = (
        all.get_mut("items")
            .and_then(serde_json::Value::as_array_mut),
        page.get("items").and_then(serde_json::Value::as_array),
    ) {
        items.extend(more.iter().cloned());
    }
    if let Some(total) = page.get("total") {
        all["total"] = total.clone();
    }
    all["next"] = next
        .clone()
        .map_or(serde_json::Value::Null, serde_json::Value::String);
    next
}

/// How many pages a client reads of one list at most: beyond, the list is changing faster than
/// it is read (or the server links in a loop).
pub const MAX_PAGES: usize = 10_000;

impl ListRequest {
    /// A request of `path?query` sent to `host` (the `Host` it named, if any) over `scheme`.
    pub fn from_parts(
        scheme: &'static str,
        host: Option<&str>,
        path: &str,
        query: Option<&str>,
    ) -> Result<Self, PageError> {
        Ok(Self {
            page: Page::from_query(query)?,
            scheme,
            host: host.map(str::to_string),
            path: path.to_string(),
            query: query.unwrap_or("").to_string(),
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ListRequest {
    type Rejection = PageError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let scheme = match parts.uri.scheme_str() {
            Some("https") => "https",
            Some(_) => "http",
            None if parts.extensions.get::<OverTls>().is_some() => "https",
            None => "http",
        };
        // `Host` (HTTP/1.1) or the URI's authority (h2); the APIs answer only to hosts they
        // serve (`http::check_host`), so the link names one of them.
        let host = parts
            .headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .filter(|h| !h.is_empty() && h.len() <= 255);
        Self::from_parts(scheme, host.as_deref(), parts.uri.path(), parts.uri.query())
    }
}

impl axum::response::IntoResponse for PageError {
    fn into_response(self) -> axum::response::Response {
        crate::http::problem(
            axum::http::StatusCode::BAD_REQUEST,
            &crate::http::Problem::invalid_parameter(self.parameter, self.reason.clone()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_follow_next_on_their_own_base() {
        assert_eq!(
            next_path("http://127.0.0.1:5681/meshes?size=2&offset=2"),
            "/meshes?size=2&offset=2"
        );
        assert_eq!(next_path("/zones?offset=1"), "/zones?offset=1");
        let mut all = serde_json::json!({"total": 3, "items": [1, 2], "next": "http://h/x?offset=2", "refusals": []});
        let more = serde_json::json!({"total": 3, "items": [3], "next": null});
        assert_eq!(next_of(&all).as_deref(), Some("/x?offset=2"));
        assert_eq!(append_page(&mut all, more), None);
        assert_eq!(
            all,
            serde_json::json!({"total": 3, "items": [1, 2, 3], "next": null, "refusals": []})
        );
    }

    #[test]
    fn sizes_and_offsets_are_checked_naming_the_parameter() {
        assert_eq!(Page::from_query(None).unwrap(), Page::default());
        assert_eq!(
            Page::from_query(Some("size=2&offset=4&dryRun=true")).unwrap(),
            Page { size: 2, offset: 4 }
        );
        assert_eq!(Page::from_query(Some("size=1000")).unwrap().size, MAX_SIZE);
        for (query, parameter) in [
            ("size=0", "size"),
            ("size=1001", "size"),
            ("size=-1", "size"),
            ("size=abc", "size"),
            ("size=", "size"),
            ("size=1e3", "size"),
            ("size=1&size=2", "size"),
            ("offset=-3", "offset"),
            ("offset=x", "offset"),
            ("offset=99999999999999999999999", "offset"),
        ] {
            let e = Page::from_query(Some(query)).unwrap_err();
            assert_eq!(e.parameter, parameter, "{query}");
        }
    }

    #[test]
    fn pages_cut_a_list_and_link_the_next_one() {
        let req = ListRequest {
            page: Page { size: 2, offset: 0 },
            scheme: "http",
            host: Some("127.0.0.1:5681".into()),
            path: "/meshes".into(),
            query: "size=2".into(),
        };
        let (total, items, next) = req.cut(vec![1, 2, 3, 4, 5]);
        assert_eq!((total, items), (5, vec![1, 2]));
        assert_eq!(
            next.as_deref(),
            Some("http://127.0.0.1:5681/meshes?size=2&offset=2")
        );
        let last = ListRequest {
            page: Page { size: 2, offset: 4 },
            query: "offset=4&size=2".into(),
            ..req.clone()
        };
        assert_eq!(last.cut(vec![1, 2, 3, 4, 5]), (5, vec![5], None));
        let middle = ListRequest {
            page: Page { size: 2, offset: 2 },
            query: "offset=2&size=2".into(),
            ..req.clone()
        };
        assert_eq!(
            middle.cut(vec![1, 2, 3, 4, 5]).2.as_deref(),
            Some("http://127.0.0.1:5681/meshes?offset=4&size=2")
        );
        // Past the end: no items, no next page.
        let beyond = ListRequest {
            page: Page { size: 2, offset: 9 },
            ..req
        };
        assert_eq!(beyond.cut(vec![1, 2, 3]), (3, vec![], None));
        // Without a Host, the path and query alone.
        assert_eq!(
            ListRequest::of("/zones", Page { size: 1, offset: 0 })
                .cut(vec!['a', 'b'])
                .2,
            Some("/zones?offset=1".to_string())
        );
    }
}
