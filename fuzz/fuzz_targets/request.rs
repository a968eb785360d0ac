//! A request's method, path and query, and its Authorization and
//! Accept-Encoding headers, against a server with basic authentication on.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// A bcrypt hash of "secret", made once: bcrypt is slow on purpose.
fn hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| bcrypt::hash("secret", 4).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&byte| byte == b'\n');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let authorization = parts.next().unwrap_or_default();
    let encoding = parts.next().unwrap_or_default();
    // Inputs that are not a request at all are the HTTP parser's to refuse.
    let Ok(request) = hyper::Request::builder()
        .method(method)
        .uri(target)
        .header("authorization", authorization)
        .header("accept-encoding", encoding)
        .body(())
    else {
        return;
    };
    for authenticated in [false, true] {
        let web = if authenticated {
            portstat_exporter::webconfig::parse(
                &format!("basic_auth_users:\n  alice: '{}'\n", hash()),
                std::path::Path::new("."),
            )
            .unwrap()
        } else {
            portstat_exporter::webconfig::WebConfig::plain()
        };
        let status = portstat_exporter::serve::answer(&request, web);
        assert!((200..600).contains(&status));
    }
});
