//! Answering one request: the endpoints, authentication (bcrypt checks
//! bounded in number, so that a flood of wrong passwords leaves the server
//! and the sampler their CPUs), content negotiation and gzip.

use super::*;

/// Answers one request as the server would, with a fixed exposition; for the
/// fuzzer. Returns the status code.
#[doc(hidden)]
pub fn answer(request: &Request<()>, web: WebConfig) -> u16 {
    let exposition = Exposition {
        text: Bytes::from_static(b"portstat_sample_success 1\n"),
        gzip: Bytes::from_static(b""),
        page: Bytes::from_static(b"<html></html>"),
        ready: true,
    };
    let (_sender, receiver) = watch::channel(Arc::new(exposition));
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return 500;
    };
    let state = State::new(
        ServeConfig {
            telemetry_path: "/metrics".to_string(),
            max_requests: 40,
            max_connections: 10,
            web: Arc::new(std::sync::RwLock::new(Arc::new(web))),
            scrapes: None,
        },
        receiver,
    );
    runtime.block_on(state.respond(request)).status().as_u16()
}

pub(super) struct State {
    pub(super) config: ServeConfig,
    expositions: watch::Receiver<Arc<Exposition>>,
    in_flight: Arc<AtomicUsize>,
    /// Places for password checks running at once.
    checks: Arc<tokio::sync::Semaphore>,
    /// Password checks waiting for a place.
    checks_waiting: Arc<AtomicUsize>,
}

/// How many bcrypt checks run at once, each on a thread of its own: half
/// the CPUs (at least one, at most four), so that a flood of wrong
/// passwords leaves the others to the server and the sampler.
fn checks_at_once() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |cpus| cpus.get() / 2)
        .clamp(1, 4)
}

/// How many password checks may wait for a place; beyond it a request
/// whose credentials need checking is answered 503 at once. Credentials
/// checked before never wait.
const CHECKS_WAITING_MAX: usize = 64;

/// A place among the waiting password checks, given back on drop (also
/// when the client goes away while it waits).
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A place in the in-flight count, released when the response body has been
/// sent (or the connection dropped), not when the handler returns.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that holds its request's place in the in-flight count,
/// if it took one.
pub struct CountedBody {
    body: Full<Bytes>,
    _place: Option<InFlight>,
}

impl Body for CountedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl State {
    pub(super) fn new(config: ServeConfig, expositions: watch::Receiver<Arc<Exposition>>) -> State {
        State {
            config,
            expositions,
            in_flight: Arc::new(AtomicUsize::new(0)),
            checks: Arc::new(tokio::sync::Semaphore::new(checks_at_once())),
            checks_waiting: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The web configuration in force.
    pub(super) fn web(&self) -> Arc<WebConfig> {
        match self.config.web.read() {
            Ok(web) => web.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Authenticates, then answers. Authentication comes first and takes
    /// no place among the requests in flight, so that a flood of wrong
    /// passwords cannot fill `--web.max-requests` either.
    pub(super) async fn respond<B>(&self, request: &Request<B>) -> Response<CountedBody> {
        let web = self.web();
        let mut place = None;
        let mut response = match self.authenticate(&web, request).await {
            Err(refusal) => refusal,
            Ok(()) => {
                let count = self.in_flight.fetch_add(1, Ordering::Relaxed);
                place = Some(InFlight(self.in_flight.clone()));
                if self.config.max_requests != 0 && count >= self.config.max_requests {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many requests in flight\n",
                    )
                } else {
                    self.route(request)
                }
            }
        };
        for (name, value) in &web.headers {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response.map(|body| CountedBody {
            body,
            _place: place,
        })
    }

    /// Checks the request's credentials where authentication is on. A
    /// bcrypt check runs on a blocking thread, a bounded number at once,
    /// never on the server's; credentials checked before are answered from
    /// memory.
    async fn authenticate<B>(
        &self,
        web: &Arc<WebConfig>,
        request: &Request<B>,
    ) -> Result<(), Response<Full<Bytes>>> {
        if !web.requires_authentication() {
            return Ok(());
        }
        let authorization = request
            .headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let authorized = match web.remembered(authorization) {
            Some(known) => known,
            None => {
                let waiting = self.checks_waiting.fetch_add(1, Ordering::Relaxed);
                let place = Waiting(self.checks_waiting.clone());
                if waiting >= CHECKS_WAITING_MAX {
                    let mut response = text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many password checks in progress\n",
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return Err(response);
                }
                let Ok(permit) = self.checks.clone().acquire_owned().await else {
                    return Err(text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"));
                };
                drop(place);
                let web = web.clone();
                let authorization = authorization.map(<[u8]>::to_vec);
                // The permit goes with the check: a client that leaves does
                // not free a place while its hash is still being computed.
                tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    web.authorizes(authorization.as_deref())
                })
                .await
                .unwrap_or(false)
            }
        };
        if authorized {
            return Ok(());
        }
        let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"portstat_exporter\""),
        );
        Err(response)
    }

    fn route<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let path = request.uri().path();
        if path == self.config.telemetry_path {
            return self.metrics(request);
        }
        match path {
            "/" => self.landing_page(),
            "/-/healthy" => text(StatusCode::OK, "Healthy\n"),
            "/-/ready" => {
                if self.expositions.borrow().ready {
                    text(StatusCode::OK, "Ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Not ready: no sample yet\n",
                    )
                }
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    fn metrics<B>(&self, request: &Request<B>) -> Response<Full<Bytes>> {
        if let Some(scrapes) = &self.config.scrapes {
            scrapes.scraped();
        }
        let exposition = self.expositions.borrow().clone();
        if exposition.text.is_empty() {
            // Before the first sample has been rendered: no figures to
            // serve, and an empty body is no gzip stream.
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "No sample yet: the first is still being taken\n",
            );
        }
        let gzip = accepts_gzip(request.headers().get_all(header::ACCEPT_ENCODING));
        let body = if gzip {
            exposition.gzip.clone()
        } else {
            exposition.text.clone()
        };
        let mut response = Response::new(Full::new(body));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(METRICS_CONTENT_TYPE),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        if gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        response
    }

    fn landing_page(&self) -> Response<Full<Bytes>> {
        let mut page = self.expositions.borrow().page.clone();
        if page.is_empty() {
            // Before the first sample has finished.
            page = Bytes::from(portstat_core::page::landing_page(
                None,
                &portstat_core::status::SampleStatus {
                    build: crate::render::BUILD,
                    ..Default::default()
                },
                &self.config.telemetry_path,
            ));
        }
        let mut response = Response::new(Full::new(page));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        response
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Whether an `Accept-Encoding` header allows gzip: `gzip` listed with a
/// weight above 0, or, where `gzip` is not listed, `*` with one (RFC 9110,
/// 12.5.3). Parameter names are case-insensitive.
fn accepts_gzip<'a>(values: impl IntoIterator<Item = &'a HeaderValue>) -> bool {
    let mut gzip = None;
    let mut any = None;
    for coding in values
        .into_iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
    {
        let mut parts = coding.split(';');
        let name = parts.next().unwrap_or("").trim();
        let weight = parts
            .filter_map(|parameter| {
                let (key, value) = parameter.split_once('=')?;
                key.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| value.trim().parse::<f32>().ok())
                    .flatten()
            })
            .next_back()
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case("gzip") {
            gzip = Some(gzip.map_or(weight, |old: f32| old.max(weight)));
        } else if name == "*" {
            any = Some(weight);
        }
    }
    gzip.or(any).is_some_and(|weight| weight > 0.0)
}

#[cfg(test)]
mod tests;
