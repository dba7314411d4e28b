//! Matches a request's Host and path to a named upstream: exact host before `*.suffix` (longest
//! first) before `*`, then the longest path prefix. Knows nothing about connections.

use crate::config::RouteConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com` stores `.example.com`.
    Suffix(String),
    Any,
}

impl HostPattern {
    fn parse(host: &str) -> HostPattern {
        let host = host.to_ascii_lowercase();
        if host == "*" {
            HostPattern::Any
        } else if let Some(suffix) = host.strip_prefix('*') {
            HostPattern::Suffix(suffix.to_string())
        } else {
            HostPattern::Exact(host)
        }
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
            HostPattern::Any => true,
        }
    }

    /// Higher is more specific: exact, then longer suffixes, then any.
    fn rank(&self) -> usize {
        match self {
            HostPattern::Exact(_) => usize::MAX,
            HostPattern::Suffix(s) => s.len(),
            HostPattern::Any => 0,
        }
    }
}

#[derive(Debug, Clone)]
struct Route {
    host: HostPattern,
    path_prefix: String,
    upstream: usize,
}

/// What a route lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Index into the upstream list the router was built with.
    pub upstream: usize,
    /// True when the host matched by name (exact or suffix), not only by `*`.
    pub host_named: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Router {
    /// Sorted most specific first, so the first match wins.
    routes: Vec<Route>,
}

impl Router {
    /// Builds the table; `upstream_index` maps an upstream name to its index (validated at load).
    pub fn new(routes: &[RouteConfig], upstream_index: impl Fn(&str) -> Option<usize>) -> Router {
        let mut routes: Vec<Route> = routes
            .iter()
            .filter_map(|r| {
                Some(Route {
                    host: HostPattern::parse(&r.host),
                    path_prefix: r.path_prefix.clone(),
                    upstream: upstream_index(&r.upstream)?,
                })
            })
            .collect();
        routes.sort_by(|a, b| {
            (b.host.rank(), b.path_prefix.len()).cmp(&(a.host.rank(), a.path_prefix.len()))
        });
        Router { routes }
    }

    /// The route for a host (any case, with or without port) and a path.
    pub fn lookup(&self, host: Option<&str>, path: &str) -> Option<Match> {
        let host = host.map(normalize_host).unwrap_or_default();
        self.routes
            .iter()
            .find(|r| r.host.matches(&host) && path_has_prefix(path, &r.path_prefix))
            .map(|r| Match {
                upstream: r.upstream,
                host_named: r.host != HostPattern::Any,
            })
    }
}

/// `Example.COM:8080` -> `example.com`; `[::1]:80` -> `[::1]`.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

fn path_has_prefix(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
}

#[cfg(test)]
mod tests;
