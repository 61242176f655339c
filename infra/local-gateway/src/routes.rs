//! The HTTP API's route table: which route a request matches and its path parameters, with
//! API Gateway's precedence (literal segments beat `{param}`, which beats `{proxy+}`; a
//! method beats `ANY`; `$default` catches the rest).

use crate::config::Route;
use lambda_http::http::Method;
use percent_encoding::percent_decode_str;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Greedy(String),
}

#[derive(Debug)]
struct Compiled {
    route: Route,
    /// `None` for `ANY`.
    method: Option<Method>,
    /// `None` for `$default`.
    segments: Option<Vec<Segment>>,
}

/// A request's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'a> {
    pub route: &'a Route,
    /// As API Gateway names it: `POST /orders/{order_id}/{action}`, or `$default`.
    pub route_key: String,
    /// Decoded, in path order.
    pub path_parameters: Vec<(String, String)>,
}

#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Compiled>,
}

#[derive(Debug, thiserror::Error)]
#[error("route {method} {path}: {reason}")]
pub struct RouteError {
    method: String,
    path: String,
    reason: &'static str,
}

impl RouteTable {
    pub fn new(routes: &[Route]) -> Result<Self, RouteError> {
        let mut compiled = Vec::with_capacity(routes.len());
        for route in routes {
            let err = |reason| RouteError {
                method: route.method.clone(),
                path: route.path.clone(),
                reason,
            };
            let method = match route.method.as_str() {
                "ANY" => None,
                m => Some(Method::from_bytes(m.as_bytes()).map_err(|_| err("invalid method"))?),
            };
            let segments = if route.path == "$default" {
                None
            } else {
                let path = route
                    .path
                    .strip_prefix('/')
                    .ok_or_else(|| err("a path starts with /"))?;
                let segments: Vec<Segment> = path.split('/').map(segment).collect();
                let greedy = segments
                    .iter()
                    .position(|s| matches!(s, Segment::Greedy(_)));
                if greedy.is_some_and(|i| i + 1 != segments.len()) {
                    return Err(err("a greedy {name+} parameter must be last"));
                }
                Some(segments)
            };
            compiled.push(Compiled {
                route: route.clone(),
                method,
                segments,
            });
        }
        compiled.sort_by_key(|c| std::cmp::Reverse(precedence(c)));
        Ok(Self { routes: compiled })
    }

    /// The route for a request, if any; `raw_path` as received (percent-encoded).
    pub fn find(&self, method: &Method, raw_path: &str) -> Option<Matched<'_>> {
        let parts: Vec<&str> = raw_path.strip_prefix('/')?.split('/').collect();
        self.routes.iter().find_map(|c| {
            if c.method.as_ref().is_some_and(|m| m != method) {
                return None;
            }
            let path_parameters = match &c.segments {
                None => Vec::new(),
                Some(segments) => match_segments(segments, &parts)?,
            };
            let route_key = match &c.segments {
                None => "$default".to_owned(),
                Some(_) => format!("{} {}", c.route.method, c.route.path),
            };
            Some(Matched {
                route: &c.route,
                route_key,
                path_parameters,
            })
        })
    }
}

fn segment(text: &str) -> Segment {
    match text.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        Some(name) => match name.strip_suffix('+') {
            Some(name) => Segment::Greedy(name.to_owned()),
            None => Segment::Param(name.to_owned()),
        },
        None => Segment::Literal(text.to_owned()),
    }
}

/// Higher first: no greedy parameter, more literal segments, more segments, a method.
fn precedence(c: &Compiled) -> (bool, bool, usize, usize, bool) {
    let segments = c.segments.as_deref().unwrap_or_default();
    let literals = segments
        .iter()
        .filter(|s| matches!(s, Segment::Literal(_)))
        .count();
    let greedy = segments.iter().any(|s| matches!(s, Segment::Greedy(_)));
    (
        c.segments.is_some(),
        !greedy,
        literals,
        segments.len(),
        c.method.is_some(),
    )
}

fn decode(part: &str) -> String {
    percent_decode_str(part).decode_utf8_lossy().into_owned()
}

fn match_segments(segments: &[Segment], parts: &[&str]) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    for (i, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Greedy(name) => {
                let rest = parts
                    .get(i..)
                    .filter(|r| !r.is_empty() && !r[0].is_empty())?;
                params.push((name.clone(), decode(&rest.join("/"))));
                return Some(params);
            }
            Segment::Literal(text) => {
                if parts.get(i).map(|p| decode(p)) != Some(text.clone()) {
                    return None;
                }
            }
            Segment::Param(name) => {
                let part = parts.get(i).filter(|p| !p.is_empty())?;
                params.push((name.clone(), decode(part)));
            }
        }
    }
    (parts.len() == segments.len()).then_some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, path: &str, function: &str) -> Route {
        Route {
            method: method.into(),
            path: path.into(),
            function: function.into(),
            binary: function.into(),
            timeout_s: 10,
            authorizer: None,
            authorization_scopes: Vec::new(),
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(&[
            route("POST", "/orders/{order_id}/{action}", "advance"),
            route("GET", "/orders/{order_id}", "get"),
            route("POST", "/orders", "place"),
            route("GET", "/orders/summary", "summary"),
            route("ANY", "/files/{path+}", "files"),
        ])
        .unwrap()
    }

    /// The function, route key and path parameters.
    type Found = (String, String, Vec<(String, String)>);

    fn find(method: Method, path: &str) -> Option<Found> {
        let table = table();
        table
            .find(&method, path)
            .map(|m| (m.route.function.clone(), m.route_key, m.path_parameters))
    }

    #[test]
    fn parameters_are_extracted_and_decoded() {
        let (function, key, params) = find(Method::POST, "/orders/abc%20d/pay").unwrap();
        assert_eq!(function, "advance");
        assert_eq!(key, "POST /orders/{order_id}/{action}");
        assert_eq!(
            params,
            vec![
                ("order_id".into(), "abc d".into()),
                ("action".into(), "pay".into())
            ]
        );
    }

    #[test]
    fn a_literal_segment_beats_a_parameter() {
        assert_eq!(find(Method::GET, "/orders/summary").unwrap().0, "summary");
        assert_eq!(find(Method::GET, "/orders/o-1").unwrap().0, "get");
    }

    #[test]
    fn method_path_and_segment_count_must_all_match() {
        assert!(find(Method::DELETE, "/orders/o-1").is_none());
        assert!(find(Method::GET, "/orders").is_none());
        assert!(find(Method::GET, "/orders/").is_none());
        assert!(find(Method::POST, "/orders/o-1/pay/extra").is_none());
        assert!(find(Method::GET, "/").is_none());
    }

    #[test]
    fn a_greedy_parameter_takes_the_rest_of_the_path_for_any_method() {
        let (function, _, params) = find(Method::DELETE, "/files/a/b.txt").unwrap();
        assert_eq!(function, "files");
        assert_eq!(params, vec![("path".into(), "a/b.txt".into())]);
        assert!(find(Method::GET, "/files/").is_none());
    }

    #[test]
    fn the_default_route_catches_what_nothing_else_matches() {
        let table = RouteTable::new(&[
            route("GET", "/orders/{order_id}", "get"),
            route("ANY", "$default", "fallback"),
        ])
        .unwrap();
        let matched = table.find(&Method::PUT, "/anything").unwrap();
        assert_eq!(matched.route.function, "fallback");
        assert_eq!(matched.route_key, "$default");
        assert_eq!(
            table
                .find(&Method::GET, "/orders/1")
                .unwrap()
                .route
                .function,
            "get"
        );
    }
}
