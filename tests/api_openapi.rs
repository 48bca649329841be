//! `resources/openapi.json` describes exactly what spry serves: every route the router
//! answers is in it, it describes nothing the router does not answer, and every
//! example request in it is accepted with the documented status and in the
//! documented phase.

use hyper::Method;
use serde_json::Value;
use spry::api::action::VmmAction;
use spry::api::routes::{parse, Route, ROUTES};

fn spec() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/resources/openapi.json");
    let text = std::fs::read_to_string(path).expect("read resources/openapi.json");
    serde_json::from_str(&text).expect("resources/openapi.json is JSON")
}

const HTTP_METHODS: [&str; 7] = ["get", "put", "patch", "post", "delete", "head", "options"];

/// One operation of the spec: method, path template, its object and its path item.
struct Operation<'a> {
    method: Method,
    path: &'a str,
    op: &'a Value,
    item: &'a Value,
}

fn operations(spec: &Value) -> Vec<Operation<'_>> {
    let paths = spec["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            HTTP_METHODS.iter().filter_map(move |m| {
                item.get(*m).map(|op| Operation {
                    method: Method::from_bytes(m.to_ascii_uppercase().as_bytes()).expect("method"),
                    path,
                    op,
                    item,
                })
            })
        })
        .collect()
}

fn route(method: &Method, path: &str) -> Option<&'static Route> {
    ROUTES
        .iter()
        .find(|r| r.method == *method && r.path == path)
}

/// The concrete path for `op`: each `{param}` replaced by the parameter's example.
fn example_path(op: &Operation<'_>) -> String {
    let params = op.item["parameters"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    params.iter().fold(op.path.to_owned(), |path, p| {
        let name = p["name"].as_str().expect("parameter name");
        let example = p["example"].as_str().expect("parameter example");
        path.replace(&format!("{{{name}}}"), example)
    })
}

/// `(example name, body, phase)` for each request example of `op`; one bodiless
/// request for operations without a body.
fn requests(op: &Operation<'_>) -> Vec<(String, Vec<u8>, String)> {
    let phase = op.op["x-spry-phase"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let examples = &op.op["requestBody"]["content"]["application/json"]["examples"];
    match examples.as_object() {
        None => vec![("(no body)".to_owned(), Vec::new(), phase)],
        Some(examples) => examples
            .iter()
            .map(|(name, e)| {
                let phase = e["x-spry-phase"].as_str().unwrap_or(&phase).to_owned();
                (name.clone(), e["value"].to_string().into_bytes(), phase)
            })
            .collect(),
    }
}

fn phase_of(action: &VmmAction) -> &'static str {
    match action {
        VmmAction::Preboot(_) => "pre-boot",
        VmmAction::Runtime(_) => "runtime",
        VmmAction::Query(_) => "any",
    }
}

#[test]
fn test_every_route_is_described() {
    let spec = spec();
    let described: Vec<(Method, &str)> = operations(&spec)
        .iter()
        .map(|o| (o.method.clone(), o.path))
        .collect();

    let missing: Vec<String> = ROUTES
        .iter()
        .filter(|r| !described.contains(&(r.method.clone(), r.path)))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();

    assert!(
        missing.is_empty(),
        "routes missing from the spec: {missing:?}"
    );
}

#[test]
fn test_every_described_operation_is_routed() {
    let spec = spec();

    let unrouted: Vec<String> = operations(&spec)
        .iter()
        .filter(|o| route(&o.method, o.path).is_none())
        .map(|o| format!("{} {}", o.method, o.path))
        .collect();

    assert!(
        unrouted.is_empty(),
        "described but not served: {unrouted:?}"
    );
}

#[test]
fn test_every_body_taking_operation_has_examples() {
    let spec = spec();

    let without: Vec<String> = operations(&spec)
        .iter()
        .filter(|o| o.method != Method::GET)
        .filter(|o| o.op["requestBody"]["content"]["application/json"]["examples"].is_null())
        .map(|o| format!("{} {}", o.method, o.path))
        .collect();

    assert!(
        without.is_empty(),
        "operations without examples: {without:?}"
    );
}

#[test]
fn test_every_example_is_accepted_with_the_documented_status() {
    let spec = spec();
    let ops = operations(&spec);

    let refused: Vec<String> = ops
        .iter()
        .flat_map(|o| {
            let path = example_path(o);
            requests(o)
                .into_iter()
                .filter_map(move |(name, body, phase)| {
                    let problem = match parse(&o.method, &path, &body) {
                        Err(e) => Some(format!("refused: {e}")),
                        Ok(action) if phase_of(&action) != phase => Some(format!(
                            "is a {} action, documented as {phase}",
                            phase_of(&action)
                        )),
                        Ok(_) => None,
                    };
                    problem.map(|p| format!("{} {path} example {name}: {p}", o.method))
                })
        })
        .collect();

    assert!(refused.is_empty(), "{refused:#?}");
}

#[test]
fn test_documented_success_status_is_the_one_served() {
    let spec = spec();

    let wrong: Vec<String> = operations(&spec)
        .iter()
        .filter_map(|o| {
            let served = route(&o.method, o.path)?.success_status().to_string();
            let documented: Vec<&String> = o.op["responses"]
                .as_object()?
                .keys()
                .filter(|k| k.starts_with('2'))
                .collect();
            (documented != [&served]).then(|| {
                format!(
                    "{} {}: documents {documented:?}, serves {served}",
                    o.method, o.path
                )
            })
        })
        .collect();

    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn test_every_operation_documents_the_fault_message_error() {
    let spec = spec();

    let without: Vec<String> = operations(&spec)
        .iter()
        .filter(|o| {
            o.op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
                != "#/components/schemas/Error"
        })
        .map(|o| format!("{} {}", o.method, o.path))
        .collect();

    assert!(without.is_empty(), "no 400 fault_message: {without:?}");
}
