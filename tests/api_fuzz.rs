//! Property tests over the request parser and the route table, and over the whole
//! HTTP stack in-process (hyper, the router and a real pre-boot controller on its
//! own thread): random and mutated requests never panic anything and always get
//! well-formed answers; refusals are 400s with a `fault_message`.

mod api_support;
mod common;

use std::sync::OnceLock;
use std::time::Duration;

use api_support::{
    corpus, corpus_without_file_creation, mutate, parse_response, Mutation, Response,
};
use hyper::Method;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use spry::api::channel::VmmClient;
use spry::api::controller::PrebootController;
use spry::api::routes::{parse, RequestError, ROUTES};
use spry::seccomp::SeccompFilters;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn methods() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::PUT),
        Just(Method::PATCH),
        Just(Method::POST),
        Just(Method::DELETE),
        Just(Method::HEAD),
        Just(Method::OPTIONS),
        Just(Method::from_bytes(b"BREW").expect("extension method")),
    ]
}

/// Paths built from the router's own segments and junk, so most land near a route.
fn paths() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just(String::new()),
        Just("drives".to_owned()),
        Just("network-interfaces".to_owned()),
        Just("machine-config".to_owned()),
        Just("boot-source".to_owned()),
        Just("actions".to_owned()),
        Just("vm".to_owned()),
        Just("config".to_owned()),
        Just("logger".to_owned()),
        Just("metrics".to_owned()),
        Just("version".to_owned()),
        Just("rootfs".to_owned()),
        "[a-zA-Z0-9_%.-]{0,10}",
        "\\PC{0,6}",
    ];
    prop::collection::vec(segment, 0..4).prop_map(|s| format!("/{}", s.join("/")))
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        (any::<usize>(), 1u8..).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        any::<usize>().prop_map(Mutation::Truncate),
        prop_oneof![
            Just("0".to_owned()),
            Just("-1".to_owned()),
            Just("18446744073709551616".to_owned()),
            Just("99999999999".to_owned()),
            Just("51201".to_owned()),
            "[0-9a-z ]{0,6}",
        ]
        .prop_map(Mutation::ContentLength),
        any::<usize>().prop_map(Mutation::InvalidUtf8),
        (any::<usize>(), any::<usize>()).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ];
    prop::collection::vec(one, 0..6)
}

/// A body: a corpus request's body mutated, or random bytes.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let corpus_bodies: Vec<Vec<u8>> = corpus()
        .iter()
        .map(|r| {
            let at = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
            r[at + 4..].to_vec()
        })
        .collect();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        4 => (0..corpus_bodies.len(), mutations())
            .prop_map(move |(i, m)| mutate(&corpus_bodies[i], &m)),
    ]
}

/// Whole requests: a corpus request mutated, or random bytes. They go to a live
/// pre-boot controller, so none may create files.
fn raw_requests() -> impl Strategy<Value = Vec<u8>> {
    let corpus = corpus_without_file_creation();
    let n = corpus.len();
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..600),
        6 => (0..n, mutations()).prop_map(move |(i, m)| mutate(&corpus[i], &m)),
        1 => (prop::collection::vec(0..n, 1..4), mutations()).prop_map({
            let corpus = corpus_without_file_creation();
            move |(picks, m)| {
                let pipelined: Vec<u8> = picks.iter().flat_map(|&i| corpus[i].clone()).collect();
                mutate(&pipelined, &m)
            }
        }),
    ]
}

/// The test oracle for routing: a path fits a template segment by segment.
fn fits(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| t.starts_with('{') || t == p)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    #[test]
    fn test_router_decides_every_request_without_panicking(
        method in methods(),
        path in paths(),
        body in bodies(),
    ) {
        let routed = ROUTES.iter().any(|r| r.method == method && fits(r.path, &path));

        let result = parse(&method, &path, &body);

        match result {
            Err(RequestError::UnknownRoute { .. }) => prop_assert!(!routed),
            Err(e) => {
                prop_assert!(routed);
                prop_assert!(!e.to_string().is_empty());
            }
            Ok(_) => prop_assert!(routed),
        }
    }
}

/// A VMM thread in the pre-boot phase, shared by every case.
fn preboot_vmm() -> VmmClient {
    static CLIENT: OnceLock<VmmClient> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let (client, inbox) = spry::api::channel::channel().expect("API channel");
            std::thread::spawn(move || {
                let controller =
                    PrebootController::new("fuzz".into(), None, SeccompFilters::none());
                let _ = controller.serve_until_start(&inbox);
            });
            client
        })
        .clone()
}

/// Sends `raw` on a fresh in-memory connection, closes the sending side, and returns
/// every byte the server wrote before it closed.
async fn exchange(raw: Vec<u8>) -> Vec<u8> {
    let (mut client, server) = tokio::io::duplex(1 << 20);
    let serve = spry::api::server::serve_connection(TokioIo::new(server), preboot_vmm());
    let talk = async move {
        let _ = client.write_all(&raw).await;
        let _ = client.shutdown().await;
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer).await;
        answer
    };
    let ((), answer) = tokio::join!(serve, talk);
    answer
}

/// Splits `bytes` into responses, or says why they are not well-formed.
fn responses(mut bytes: &[u8]) -> Result<Vec<Response>, String> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (response, used) = parse_response(bytes)?.ok_or("a truncated response")?;
        bytes = &bytes[used..];
        out.push(response);
    }
    Ok(out)
}

/// What a well-formed answer is: a status spry or hyper gives, JSON where spry
/// answered, a `fault_message` on spry's refusals.
fn check(response: &Response) -> Result<(), String> {
    if ![100, 200, 204, 400, 414, 431, 501, 505].contains(&response.status) {
        return Err(format!("status {}", response.status));
    }
    if response.header("content-type") != Some("application/json") {
        return match response.status {
            200 => Err("a 200 without JSON".into()),
            _ => Ok(()),
        };
    }
    let body: serde_json::Value =
        serde_json::from_slice(&response.body).map_err(|e| format!("body is not JSON: {e}"))?;
    match response.status {
        400 if !body["fault_message"].is_string() => Err(format!("no fault_message: {body}")),
        _ => Ok(()),
    }
}

#[test]
fn test_http_stack_answers_hostile_bytes_with_well_formed_responses() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = ProptestConfig::with_cases(3000);

    proptest!(config, |(raw in raw_requests())| {
        let answer = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), exchange(raw.clone())).await
        });

        let answer = answer.map_err(|_| TestCaseError::fail("the server hung"))?;
        let parsed = responses(&answer).map_err(TestCaseError::fail)?;
        for response in &parsed {
            check(response).map_err(TestCaseError::fail)?;
        }
    });
}
