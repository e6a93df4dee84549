//! The routes command-api serves, read from its source, against the paths `openapi.yaml` documents.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{HTTP_METHODS, read_yaml, schemas_dir, workspace_root};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(String),
    Punct(char),
}

/// A small Rust tokenizer: identifiers, string literals (plain and raw) and punctuation;
/// comments, numbers, char literals and whitespace are dropped.
fn tokenize(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            let mut text = String::new();
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = chars.get(i) {
                    text.push(ch);
                }
                i += 1;
            }
            i += 1;
            tokens.push(Token::Str(text));
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let raw_string =
                matches!(ident.as_str(), "r" | "br") && matches!(chars.get(i), Some('"' | '#'));
            if raw_string {
                let hashes = chars[i..].iter().take_while(|&&h| h == '#').count();
                i += hashes + 1;
                let closing: String = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                let rest: String = chars[i..].iter().collect();
                let end = rest.find(&closing).unwrap_or(rest.len());
                tokens.push(Token::Str(rest[..end].to_owned()));
                i += rest[..end].chars().count() + closing.chars().count();
            } else {
                tokens.push(Token::Ident(ident));
            }
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else {
            tokens.push(Token::Punct(c));
            i += 1;
        }
    }
    tokens
}

pub(crate) fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries =
        fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// Drops every item under `#[cfg(test)]`: the attribute and what follows it up to the
/// item's end (a `;` or a closed `{ .. }` block at its own level).
fn without_test_items(tokens: Vec<Token>) -> Vec<Token> {
    let attribute: Vec<Token> = tokenize("#[cfg(test)]");
    let mut kept = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if !tokens[i..].starts_with(&attribute) {
            kept.push(tokens[i].clone());
            i += 1;
            continue;
        }
        i += attribute.len();
        let mut depth = 0_usize;
        while let Some(token) = tokens.get(i) {
            i += 1;
            match token {
                Token::Punct('{' | '(' | '[') => depth += 1,
                Token::Punct('}') if depth == 1 => break,
                Token::Punct('}' | ')' | ']') => depth = depth.saturating_sub(1),
                Token::Punct(';') if depth == 0 => break,
                _ => {}
            }
        }
    }
    kept
}

/// `(METHOD, path)` -> the file that routes it.
type Routes = BTreeMap<(String, String), String>;

/// The routes in one file: every `.route("<path>", <method router>)`, where the method
/// router chains `get|post|put|patch|delete(handler)` (bare or path-qualified). Anything
/// the scan does not understand fails the test rather than being skipped. Items under
/// `#[cfg(test)]` are not the served router.
fn routes_in(file: &str, source: &str, routes: &mut Routes) {
    let tokens = without_test_items(tokenize(source));
    let ident = |i: usize| match tokens.get(i) {
        Some(Token::Ident(name)) => Some(name.as_str()),
        _ => None,
    };
    let punct = |i: usize, c: char| tokens.get(i) == Some(&Token::Punct(c));
    for i in 0..tokens.len() {
        if !punct(i, '.') || !punct(i + 2, '(') {
            continue;
        }
        match ident(i + 1) {
            Some("route") => {}
            Some(other @ ("nest" | "nest_service" | "route_service" | "route_layer")) => panic!(
                "{file}: `.{other}(..)` adds routes the scan in tests/tests/schemas/routes.rs \
                 does not understand; extend `routes_in`"
            ),
            _ => continue,
        }
        let Some(Token::Str(path)) = tokens.get(i + 3) else {
            panic!("{file}: a `.route(` whose first argument is not a string literal");
        };
        assert!(
            punct(i + 4, ','),
            "{file}: `.route({path:?}` is not followed by `,`"
        );
        let mut depth = 0;
        let mut methods = Vec::new();
        let mut j = i + 5;
        while j < tokens.len() {
            match &tokens[j] {
                Token::Punct('(' | '[' | '{') => depth += 1,
                Token::Punct(')' | ']' | '}') if depth == 0 => break,
                Token::Punct(')' | ']' | '}') => depth -= 1,
                Token::Ident(name) if depth == 0 && punct(j + 1, '(') => {
                    let method = name.as_str();
                    assert!(
                        matches!(method, "get" | "post" | "put" | "patch" | "delete"),
                        "{file}: route {path:?} uses `{method}(..)`, which the scan in \
                         tests/tests/schemas/routes.rs does not understand; extend `routes_in`"
                    );
                    methods.push(method.to_uppercase());
                }
                _ => {}
            }
            j += 1;
        }
        assert!(!methods.is_empty(), "{file}: route {path:?} has no method");
        for method in methods {
            routes.insert((method, path.clone()), file.to_owned());
        }
    }
}

fn served_routes() -> Routes {
    let root = workspace_root();
    let mut files = Vec::new();
    rust_files(&root.join("command-api/src"), &mut files);
    files.sort();
    let mut routes = Routes::new();
    for path in files {
        let source = fs::read_to_string(&path).unwrap();
        let name = path
            .strip_prefix(&root)
            .unwrap_or(&path)
            .display()
            .to_string();
        routes_in(&name, &source, &mut routes);
    }
    routes
}

/// `(METHOD, path)` -> whether the operation is marked `x-keel-status: planned`.
fn documented_operations(openapi: &Value) -> BTreeMap<(String, String), bool> {
    let paths = openapi["paths"]
        .as_object()
        .expect("schemas/openapi.yaml has no `paths`");
    let mut operations = BTreeMap::new();
    for (path, item) in paths {
        for method in HTTP_METHODS {
            if let Some(operation) = item.get(method) {
                let planned = operation.get("x-keel-status") == Some(&Value::from("planned"));
                operations.insert((method.to_uppercase(), path.clone()), planned);
            }
        }
    }
    operations
}

#[test]
fn the_route_scan_reads_every_form_the_router_uses() {
    let source = r#"
        // .route("/commented", get(nothing))
        #[cfg(test)]
        use crate::testing::helper;
        #[cfg(test)]
        fn test_router() -> Router { Router::new().route("/test-fn", get(t)) }
        pub fn router() -> Router<AppState> {
            Router::new()
                .route("/a", post(create))
                .route("/a/{id}", axum::routing::get(read).patch(update).delete(delete))
                .route("/a/{id}/like", put(like).delete(unlike))
                .route("/b/{id}", get(handler_with(State(x), "str)ing")))
        }
        #[cfg(test)]
        mod tests { fn t() { Router::new().route("/test-only", get(t)); } }
    "#;
    let mut routes = Routes::new();
    routes_in("example.rs", source, &mut routes);
    let found: Vec<String> = routes.keys().map(|(m, p)| format!("{m} {p}")).collect();
    assert_eq!(
        found,
        [
            "DELETE /a/{id}",
            "DELETE /a/{id}/like",
            "GET /a/{id}",
            "GET /b/{id}",
            "PATCH /a/{id}",
            "POST /a",
            "PUT /a/{id}/like",
        ]
    );
}

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let openapi = read_yaml(&schemas_dir().join("openapi.yaml"));
    assert!(
        openapi["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "schemas/openapi.yaml must be OpenAPI 3.1"
    );
    let documented = documented_operations(&openapi);
    let served = served_routes();
    assert!(
        served.contains_key(&("POST".to_owned(), "/api/users".to_owned())),
        "the route scan found no `POST /api/users`; it no longer reads the router: {served:?}"
    );

    let undocumented: Vec<String> = served
        .iter()
        .filter(|(route, _)| !documented.contains_key(*route))
        .map(|((method, path), file)| format!("{method} {path} (routed in {file})"))
        .collect();
    let unserved: Vec<String> = documented
        .iter()
        .filter(|(route, planned)| !**planned && !served.contains_key(*route))
        .map(|((method, path), _)| format!("{method} {path}"))
        .collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "schemas/openapi.yaml and command-api's router disagree.\n  \
         served but not documented: {undocumented:#?}\n  \
         documented (without `x-keel-status: planned`) but not served: {unserved:#?}"
    );
}

/// The routes of the contract's "Trust" section (revocations and WebSocket tickets):
/// served by command-api and documented as served.
#[test]
fn the_trust_routes_are_served_and_documented() {
    let openapi = read_yaml(&schemas_dir().join("openapi.yaml"));
    let documented = documented_operations(&openapi);
    let served = served_routes();
    let mut problems = Vec::new();
    for (method, path) in [
        ("POST", "/api/admin/revocations"),
        ("GET", "/api/admin/revocations"),
        ("POST", "/api/ws-tickets"),
    ] {
        let route = (method.to_owned(), path.to_owned());
        if !served.contains_key(&route) {
            problems.push(format!("{method} {path} is not served by command-api"));
        }
        match documented.get(&route) {
            None => problems.push(format!("{method} {path} is not in schemas/openapi.yaml")),
            Some(true) => problems.push(format!(
                "{method} {path} is marked `x-keel-status: planned` in schemas/openapi.yaml"
            )),
            Some(false) => {}
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
