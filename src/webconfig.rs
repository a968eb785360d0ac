//! `--web.config.file`: TLS, basic authentication and response headers, in
//! the Prometheus exporter-toolkit's YAML format.
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt        # relative to this file's folder
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: clients.crt
//!   min_version: TLS12
//! basic_auth_users:
//!   prometheus: $2y$10$...      # htpasswd -nBC 10 "" | tr -d ':\n'
//! http_server_config:
//!   headers:
//!     Strict-Transport-Security: max-age=31536000
//! ```
//!
//! Unknown keys are errors. Every error names the field at fault.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper::header::{HeaderName, HeaderValue};
use serde::Deserialize;

/// A web configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub struct WebConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The field at fault, as a dotted path; empty when the fault is the
    /// file's (it cannot be read, or is not YAML).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for WebConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.reason
            )
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    http_server_config: Option<HttpFile>,
    #[serde(default, deserialize_with = "without_duplicates")]
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: String,
    key_file: String,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    #[serde(default, deserialize_with = "without_duplicates")]
    headers: Option<BTreeMap<String, String>>,
}

/// A map whose keys are all different: YAML takes the last of a key given
/// twice, so a user or header written twice would be silently replaced.
fn without_duplicates<'de, D>(deserializer: D) -> Result<Option<BTreeMap<String, String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = Option<BTreeMap<String, String>>;

        fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
            formatter.write_str("a map of strings")
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_map<M: serde::de::MapAccess<'de>>(
            self,
            mut map: M,
        ) -> Result<Self::Value, M::Error> {
            let mut entries = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                if entries.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!("duplicate key `{key}`")));
                }
                entries.insert(key, value);
            }
            Ok(Some(entries))
        }
    }
    deserializer.deserialize_any(Unique)
}

/// A web configuration, checked and ready to serve with.
pub struct WebConfig {
    /// The TLS server configuration, when TLS is on.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// User name to bcrypt hash; empty when authentication is off.
    users: HashMap<String, String>,
    /// Headers added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Results of checked passwords, so that a scrape does not pay a bcrypt
    /// hash each time: (user, SHA-256 of user, password and hash) to result.
    checked: Mutex<HashMap<[u8; 32], bool>>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The users are listed, their hashes are not.
        formatter
            .debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("headers", &self.headers)
            .finish()
    }
}

/// How many checked passwords are remembered.
const CHECKED_MAX: usize = 1024;

impl WebConfig {
    /// No TLS, no authentication, no extra headers.
    pub fn plain() -> WebConfig {
        WebConfig {
            tls: None,
            users: HashMap::new(),
            headers: Vec::new(),
            checked: Mutex::new(HashMap::new()),
        }
    }

    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let error = |field: &str, reason: String| WebConfigError {
            file: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| error("", format!("cannot read it: {e}")))?;
        let folder = path.parent().unwrap_or(Path::new("."));
        parse(&text, folder).map_err(|(field, reason)| error(&field, reason))
    }

    /// Whether requests must carry a user and password.
    pub fn requires_authentication(&self) -> bool {
        !self.users.is_empty()
    }

    /// What taking this configuration in place of `current` would turn
    /// off, if anything: a reload must not drop TLS or authentication by
    /// accident (an emptied or half-written file), so that takes a restart.
    pub fn lowers_security_of(&self, current: &WebConfig) -> Option<&'static str> {
        if current.tls.is_some() && self.tls.is_none() {
            Some("it would turn TLS off")
        } else if current.requires_authentication() && !self.requires_authentication() {
            Some("it would turn basic authentication off")
        } else {
            None
        }
    }

    /// Whether an `Authorization` header value names a user with the right
    /// password.
    pub fn authorizes(&self, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        let Some(hash) = self.users.get(&user) else {
            return false;
        };
        let key = cache_key(&user, &password, hash);
        if let Some(known) = self
            .checked
            .lock()
            .ok()
            .and_then(|checked| checked.get(&key).copied())
        {
            return known;
        }
        let result = bcrypt::verify(&password, hash).unwrap_or(false);
        if let Ok(mut checked) = self.checked.lock() {
            if checked.len() >= CHECKED_MAX {
                checked.clear();
            }
            checked.insert(key, result);
        }
        result
    }
}

fn cache_key(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, password, hash] {
        context.update(&(part.len() as u64).to_le_bytes());
        context.update(part.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(context.finish().as_ref());
    key
}

/// The response headers `http_server_config.headers` may set, lower-cased:
/// security headers only, as exporter-toolkit allows. Others could break
/// every response (`Content-Length`, `Content-Encoding`, `Transfer-Encoding`)
/// or lie about it (`Content-Type`).
const SETTABLE_HEADERS: [&str; 5] = [
    "strict-transport-security",
    "content-security-policy",
    "x-frame-options",
    "x-content-type-options",
    "x-xss-protection",
];

/// Parses the YAML text of a configuration whose relative paths are relative
/// to `folder`. Errors are (field, reason).
pub fn parse(text: &str, folder: &Path) -> Result<WebConfig, (String, String)> {
    let file: File = if text.trim().is_empty() {
        File {
            tls_server_config: None,
            http_server_config: None,
            basic_auth_users: None,
        }
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| (String::new(), e.to_string()))?
    };
    let mut users = HashMap::new();
    for (user, hash) in file.basic_auth_users.unwrap_or_default() {
        // A bcrypt hash: $2a$, $2b$ or $2y$, cost, 53 characters of salt and hash.
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err((
                format!("basic_auth_users.{user}"),
                "not a bcrypt hash (htpasswd -nBC 10 makes one)".to_string(),
            ));
        }
        users.insert(user, hash);
    }
    let mut headers = Vec::new();
    for (name, value) in file
        .http_server_config
        .and_then(|http| http.headers)
        .unwrap_or_default()
    {
        let field = format!("http_server_config.headers.{name}");
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| (field.clone(), "not a header name".to_string()))?;
        if !SETTABLE_HEADERS.contains(&name.as_str()) {
            return Err((
                field,
                format!(
                    "not a header the configuration may set; these may be (as exporter-toolkit allows): {}",
                    SETTABLE_HEADERS.join(", ")
                ),
            ));
        }
        let value = HeaderValue::from_str(&value)
            .map_err(|_| (field.clone(), "not a header value".to_string()))?;
        headers.push((name, value));
    }
    let tls = match file.tls_server_config {
        Some(tls) => Some(Arc::new(tls_config(&tls, folder)?)),
        None => None,
    };
    Ok(WebConfig {
        tls,
        users,
        headers,
        checked: Mutex::new(HashMap::new()),
    })
}

fn tls_config(tls: &TlsFile, folder: &Path) -> Result<rustls::ServerConfig, (String, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let field = |name: &str| format!("tls_server_config.{name}");
    let resolve = |file: &str| folder.join(file);
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(resolve(&tls.cert_file))
            .and_then(|certificates| certificates.collect())
            .map_err(|e| (field("cert_file"), e.to_string()))?;
    if certificates.is_empty() {
        return Err((field("cert_file"), "no certificate in the file".to_string()));
    }
    let key = PrivateKeyDer::from_pem_file(resolve(&tls.key_file))
        .map_err(|e| (field("key_file"), e.to_string()))?;
    let version = |name: &str, value: &Option<String>, default| match value.as_deref() {
        None => Ok(default),
        Some("TLS12") => Ok(12),
        Some("TLS13") => Ok(13),
        Some(other) => Err((
            field(name),
            format!("{other:?}: expected TLS12 or TLS13 (older versions are not offered)"),
        )),
    };
    let min = version("min_version", &tls.min_version, 12)?;
    let max = version("max_version", &tls.max_version, 13)?;
    let versions: Vec<&'static rustls::SupportedProtocolVersion> =
        [(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(number, _)| (min..=max).contains(number))
            .map(|(_, version)| version)
            .collect();
    if versions.is_empty() {
        return Err((field("max_version"), "below min_version".to_string()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| (field("min_version"), e.to_string()))?;
    let client_roots = || -> Result<Arc<rustls::RootCertStore>, (String, String)> {
        let Some(file) = &tls.client_ca_file else {
            return Err((
                field("client_ca_file"),
                "needed to verify client certificates".to_string(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(resolve(file))
            .map_err(|e| (field("client_ca_file"), e.to_string()))?
        {
            let certificate = certificate.map_err(|e| (field("client_ca_file"), e.to_string()))?;
            roots
                .add(certificate)
                .map_err(|e| (field("client_ca_file"), e.to_string()))?;
        }
        Ok(Arc::new(roots))
    };
    let verifier = |roots, optional: bool| {
        let builder =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
        let builder = if optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        builder
            .build()
            .map_err(|e| (field("client_ca_file"), e.to_string()))
    };
    let builder = match tls.client_auth_type.as_deref().unwrap_or("NoClientCert") {
        "NoClientCert" => builder.with_no_client_auth(),
        "VerifyClientCertIfGiven" => {
            builder.with_client_cert_verifier(verifier(client_roots()?, true)?)
        }
        "RequireAndVerifyClientCert" => {
            builder.with_client_cert_verifier(verifier(client_roots()?, false)?)
        }
        other => {
            return Err((
                field("client_auth_type"),
                format!(
                    "{other:?}: expected NoClientCert, VerifyClientCertIfGiven or \
                     RequireAndVerifyClientCert (certificates that are not verified are not accepted)"
                ),
            ));
        }
    };
    let mut config = builder
        .with_single_cert(certificates, key)
        .map_err(|e| (field("key_file"), e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Parses `Basic <base64 of user:password>`.
pub fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = decode_base64(encoded.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Decodes standard base64 with padding, canonical only (no stray bits in
/// the last character); `None` on anything else.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(
            decode_base64("dXNlcjpwYXNz").as_deref(),
            Some(&b"user:pass"[..])
        );
        assert_eq!(decode_base64("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(decode_base64("YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(decode_base64("").as_deref(), Some(&b""[..]));
        // YR== decodes to "a" too, with bits left over: not canonical.
        for bad in ["YQ=", "Y===", "YQ==YQ==", "****", "YW?=", "YR=="] {
            assert_eq!(decode_base64(bad), None, "{bad}");
        }
    }

    #[test]
    fn basic_authorization() {
        assert_eq!(
            parse_basic(b"Basic dXNlcjpwOmFzcw=="),
            Some(("user".to_string(), "p:ass".to_string()))
        );
        assert_eq!(parse_basic(b"Bearer dXNlcjpwYXNz"), None);
        assert_eq!(parse_basic(b"Basic"), None);
        assert_eq!(parse_basic(b"Basic bm9jb2xvbg=="), None, "no colon");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_field() {
        let folder = Path::new("/nonexistent");
        let error = |text: &str| match parse(text, folder) {
            Ok(_) => panic!("{text:?} was accepted"),
            Err(error) => error,
        };
        assert!(
            error("tls_server_config:\n  cert_file: a\n  key_file: b\n  colour: red\n")
                .1
                .contains("unknown field `colour`")
        );
        assert!(
            error("basic_auth_user:\n  a: b\n")
                .1
                .contains("unknown field")
        );
        assert_eq!(
            error("basic_auth_users:\n  alice: plaintext\n").0,
            "basic_auth_users.alice"
        );
        assert_eq!(
            error("http_server_config:\n  headers:\n    \"bad header\": x\n").0,
            "http_server_config.headers.bad header"
        );
        assert_eq!(
            error("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n").0,
            "tls_server_config.cert_file"
        );
    }

    #[test]
    fn only_security_headers_may_be_set() {
        let parsed = |name: &str| {
            parse(
                &format!("http_server_config:\n  headers:\n    {name}: '5'\n"),
                Path::new("."),
            )
        };
        for allowed in [
            "Strict-Transport-Security",
            "X-Frame-Options",
            "x-content-type-options",
            "X-XSS-Protection",
            "Content-Security-Policy",
        ] {
            assert!(parsed(allowed).is_ok(), "{allowed}");
        }
        for refused in [
            "Content-Length",
            "Content-Encoding",
            "Content-Type",
            "Transfer-Encoding",
            "Set-Cookie",
        ] {
            let (field, reason) = parsed(refused).unwrap_err();
            assert_eq!(field, format!("http_server_config.headers.{refused}"));
            assert!(
                reason.contains("Strict-Transport-Security")
                    || reason.contains("strict-transport-security"),
                "{reason}"
            );
        }
    }

    #[test]
    fn a_user_named_twice_is_an_error() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let text = format!("basic_auth_users:\n  alice: '{hash}'\n  alice: '{hash}'\n");
        let error = parse(&text, Path::new(".")).unwrap_err();
        assert!(error.1.contains("duplicate key `alice`"), "{error:?}");
        // Given but empty is no user at all, as before.
        assert!(
            !parse("basic_auth_users:\n", Path::new("."))
                .unwrap()
                .requires_authentication()
        );
    }

    #[test]
    fn a_reload_may_not_drop_authentication() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let with_users = parse(
            &format!("basic_auth_users:\n  alice: '{hash}'\n"),
            Path::new("."),
        )
        .unwrap();
        let empty = parse("", Path::new(".")).unwrap();
        assert_eq!(
            empty.lowers_security_of(&with_users),
            Some("it would turn basic authentication off")
        );
        assert_eq!(with_users.lowers_security_of(&empty), None);
        assert_eq!(with_users.lowers_security_of(&with_users), None);
    }

    #[test]
    fn an_empty_file_is_plain_http() {
        let config = parse("", Path::new(".")).unwrap();
        assert!(config.tls.is_none());
        assert!(!config.requires_authentication());
    }

    #[test]
    fn passwords_are_checked_once_then_remembered() {
        let hash = bcrypt::hash("secret", 4).unwrap();
        let config = parse(
            &format!("basic_auth_users:\n  alice: '{hash}'\n"),
            Path::new("."),
        )
        .unwrap();
        let header = |user_password: &str| {
            format!("Basic {}", encode_for_test(user_password.as_bytes())).into_bytes()
        };
        assert!(config.authorizes(Some(&header("alice:secret"))));
        assert!(config.authorizes(Some(&header("alice:secret"))));
        assert!(!config.authorizes(Some(&header("alice:wrong"))));
        assert!(!config.authorizes(Some(&header("bob:secret"))));
        assert!(!config.authorizes(None));
        assert_eq!(config.checked.lock().unwrap().len(), 2);
    }

    fn encode_for_test(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let word = chunk
                .iter()
                .fold(0u32, |word, &byte| word << 8 | u32::from(byte))
                << (8 * (3 - chunk.len()));
            for index in 0..4 {
                if index <= chunk.len() {
                    out.push(ALPHABET[(word >> (18 - 6 * index) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}
