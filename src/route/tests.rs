use super::*;

fn route(host: &str, prefix: &str, upstream: &str) -> RouteConfig {
    RouteConfig {
        host: host.into(),
        path_prefix: prefix.into(),
        upstream: upstream.into(),
    }
}

fn router(routes: &[RouteConfig]) -> Router {
    let names = ["a", "b", "c", "d"];
    Router::new(routes, |n| names.iter().position(|x| *x == n))
}

#[test]
fn exact_host_beats_suffix_and_wildcard() {
    let r = router(&[
        route("*", "/", "a"),
        route("*.example.com", "/", "b"),
        route("www.example.com", "/", "c"),
    ]);
    assert_eq!(r.lookup(Some("www.example.com"), "/x").unwrap().upstream, 2);
    assert_eq!(r.lookup(Some("api.example.com"), "/x").unwrap().upstream, 1);
    assert_eq!(r.lookup(Some("other.org"), "/x").unwrap().upstream, 0);
}

#[test]
fn longest_path_prefix_wins() {
    let r = router(&[
        route("*", "/", "a"),
        route("*", "/api/", "b"),
        route("*", "/api/v2/", "c"),
    ]);
    assert_eq!(r.lookup(Some("h"), "/api/v2/users").unwrap().upstream, 2);
    assert_eq!(r.lookup(Some("h"), "/api/v1").unwrap().upstream, 1);
    assert_eq!(r.lookup(Some("h"), "/index.html").unwrap().upstream, 0);
}

#[test]
fn host_matching_ignores_case_and_port() {
    let r = router(&[route("www.example.com", "/", "a")]);
    assert_eq!(
        r.lookup(Some("WWW.Example.com:8080"), "/")
            .unwrap()
            .upstream,
        0
    );
    assert!(r.lookup(Some("example.com"), "/").is_none());
}

#[test]
fn suffix_does_not_match_the_bare_domain() {
    let r = router(&[route("*.example.com", "/", "a")]);
    assert!(r.lookup(Some("example.com"), "/").is_none());
    assert!(r.lookup(Some("evil-example.com"), "/").is_none());
}

#[test]
fn missing_host_only_matches_wildcard() {
    let r = router(&[route("www.example.com", "/", "a"), route("*", "/", "b")]);
    let m = r.lookup(None, "/").unwrap();
    assert_eq!(m.upstream, 1);
    assert!(!m.host_named);
}

#[test]
fn no_route_is_none() {
    let r = router(&[route("*", "/api/", "a")]);
    assert!(r.lookup(Some("h"), "/other").is_none());
}

#[test]
fn ipv6_host_keeps_brackets_and_drops_port() {
    assert_eq!(normalize_host("[::1]:8080"), "[::1]");
    assert_eq!(normalize_host("Example.com."), "example.com");
}
