//! Unit tests of `serve::respond`.

use super::*;

fn accepts(values: &[&'static str]) -> bool {
    let values: Vec<HeaderValue> = values.iter().map(|v| HeaderValue::from_static(v)).collect();
    accepts_gzip(&values)
}

fn state(max_requests: usize) -> State {
    let (_, receiver) = watch::channel(Arc::new(Exposition::default()));
    State::new(
        ServeConfig {
            telemetry_path: "/metrics".to_string(),
            max_requests,
            max_connections: 10,
            web: Arc::new(std::sync::RwLock::new(Arc::new(WebConfig::plain()))),
            scrapes: None,
        },
        receiver,
    )
}

fn respond(state: &State, request: &Request<()>) -> Response<CountedBody> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(state.respond(request))
}

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

#[test]
fn a_sampler_that_stops_is_noticed() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let (sender, receiver) = watch::channel(Arc::new(Exposition::default()));
    let sampler = std::thread::spawn(move || {
        sender.send(Arc::new(Exposition::default())).unwrap();
        panic!("a sampler bug");
    });
    assert!(sampler.join().is_err());
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), sampler_stopped(receiver))
            .await
            .expect("the stopped sampler went unnoticed");
    });
}

#[test]
fn requests_beyond_the_limit_get_503_until_one_finishes() {
    let state = state(2);
    let first = respond(&state, &get("/-/healthy"));
    let second = respond(&state, &get("/-/healthy"));
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(
        respond(&state, &get("/-/healthy")).status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    drop(first);
    assert_eq!(respond(&state, &get("/-/healthy")).status(), StatusCode::OK);
    drop(second);
    assert_eq!(state.in_flight.load(Ordering::Relaxed), 0);
}

#[test]
fn no_limit_when_zero() {
    let state = state(0);
    let held: Vec<_> = (0..100)
        .map(|_| respond(&state, &get("/-/healthy")))
        .collect();
    assert!(
        held.iter()
            .all(|response| response.status() == StatusCode::OK)
    );
}

#[test]
fn routes() {
    let state = state(0);
    assert_eq!(respond(&state, &get("/")).status(), StatusCode::OK);
    assert_eq!(
        respond(&state, &get("/nope")).status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        respond(&state, &get("/-/ready")).status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Nothing rendered yet: no empty 200, gzip or not.
    let metrics = respond(&state, &get("/metrics"));
    assert_eq!(metrics.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!metrics.headers().contains_key(header::CONTENT_ENCODING));
    let post = Request::post("/metrics").body(()).unwrap();
    let response = respond(&state, &post);
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()[header::ALLOW], "GET, HEAD");
}

#[test]
fn gzip_negotiation() {
    assert!(accepts(&["gzip"]));
    assert!(accepts(&["deflate, GZIP;q=0.5"]));
    assert!(accepts(&["identity", "gzip"]));
    assert!(accepts(&["*"]));
    assert!(!accepts(&[]));
    assert!(!accepts(&["identity"]));
    assert!(!accepts(&["gzip;q=0"]));
    assert!(!accepts(&["x-gzip-ish"]));
    // Refused by name, whatever `*` says; the parameter's name in any case.
    assert!(!accepts(&["gzip;q=0, *"]));
    assert!(!accepts(&["gzip;Q=0"]));
    assert!(!accepts(&["gzip; q=0.000"]));
    assert!(!accepts(&["*;q=0"]));
    assert!(accepts(&["*;q=0, gzip"]));
}
