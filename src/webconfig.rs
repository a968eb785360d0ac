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

use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// The hash an unknown user's password is checked against, so that
    /// refusing one costs what refusing a wrong password does: timing does
    /// not tell which users exist.
    decoy: Option<String>,
    /// Headers added to every response.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Every file the configuration was read from (the YAML, certificates,
    /// keys, CA), for the reload to watch.
    pub files: Vec<PathBuf>,
    /// What is wrong but does not stop it from loading, for the log: a
    /// server certificate that has expired or is not valid yet.
    pub warnings: Vec<String>,
    /// Checked credentials, so that a scrape does not pay a bcrypt hash each
    /// time; by SHA-256 of user, password and hash.
    remembered: Mutex<Remembered>,
}

/// Credentials checked before. The accepted ones are kept apart from the
/// refused ones, so that a flood of wrong passwords cannot push a good one
/// out and make the next correct scrape wait behind the flood.
#[derive(Default)]
struct Remembered {
    accepted: HashSet<[u8; 32]>,
    refused: HashSet<[u8; 32]>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The users are listed, their hashes are not.
        formatter
            .debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("users", &self.users.keys().collect::<Vec<_>>())
            .field("headers", &self.headers)
            .field("files", &self.files)
            .finish()
    }
}

/// How many checked credentials of each kind are remembered; beyond it the
/// kind is forgotten and checked anew.
const REMEMBERED_MAX: usize = 1024;

/// The most a configuration file (YAML, certificate, key, CA) may hold. A
/// CA bundle of every public root is about 200 KiB.
pub const FILE_LIMIT: u64 = 1 << 20;

/// The highest bcrypt cost a password hash may have. Each step doubles the
/// time a check takes: cost 10, what `htpasswd -nBC 10` makes and
/// exporter-toolkit's users mostly use, takes about 70 ms on one core of a
/// 2-core VM, and this cost about a second. A costlier hash would let one
/// anonymous request hold a check for minutes or days.
pub const MAX_BCRYPT_COST: u32 = 14;

/// The deepest nesting of flow collections (`[`, `{`) the YAML may have.
/// A web configuration needs none; the YAML parser's time grows with the
/// square of the depth.
const NESTING_LIMIT: usize = 32;

impl WebConfig {
    /// No TLS, no authentication, no extra headers.
    pub fn plain() -> WebConfig {
        WebConfig {
            tls: None,
            users: HashMap::new(),
            decoy: None,
            headers: Vec::new(),
            files: Vec::new(),
            warnings: Vec::new(),
            remembered: Mutex::new(Remembered::default()),
        }
    }

    /// Reads and checks the file at `path`. Files are read as
    /// `files::read_bounded` does: regular files only, without blocking,
    /// at most `FILE_LIMIT` bytes each. This can take tens of milliseconds:
    /// call it where it stalls no request.
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        let error = |field: &str, reason: String| WebConfigError {
            file: path.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        let bytes = crate::files::read_bounded(path, FILE_LIMIT)
            .map_err(|e| error("", format!("cannot read it: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| error("", "not UTF-8".to_string()))?;
        let folder = path.parent().unwrap_or(Path::new("."));
        let mut config = parse(&text, folder).map_err(|(field, reason)| error(&field, reason))?;
        config.files.insert(0, path.to_path_buf());
        Ok(config)
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

    /// Takes over the credentials `old` accepted: those whose user still has
    /// the same hash are accepted again at once after a reload.
    pub fn remember_accepted_from(&self, old: &WebConfig) {
        let (Ok(mut mine), Ok(theirs)) = (self.remembered.lock(), old.remembered.lock()) else {
            return;
        };
        mine.accepted.extend(theirs.accepted.iter().copied());
    }

    /// Whether an `Authorization` header value is known to be right or
    /// wrong without a bcrypt check: it is missing or malformed, or these
    /// credentials were checked before. `None` when `authorizes` has to
    /// check them.
    pub fn remembered(&self, authorization: Option<&[u8]>) -> Option<bool> {
        match authorization.and_then(parse_basic) {
            None => Some(false),
            Some((user, password)) => self.recall(&self.key(&user, &password)),
        }
    }

    /// What the credentials under `key` were found to be, if checked.
    fn recall(&self, key: &[u8; 32]) -> Option<bool> {
        let remembered = self.remembered.lock().ok()?;
        if remembered.accepted.contains(key) {
            Some(true)
        } else if remembered.refused.contains(key) {
            Some(false)
        } else {
            None
        }
    }

    /// Whether an `Authorization` header value names a user with the right
    /// password. A bcrypt check, tens of milliseconds, unless `remembered`
    /// knows the answer: call it where it stalls no request. An unknown
    /// user's password is checked against a real user's hash all the same.
    pub fn authorizes(&self, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        let key = self.key(&user, &password);
        if let Some(known) = self.recall(&key) {
            return known;
        }
        let result = match (self.users.get(&user), &self.decoy) {
            (Some(hash), _) => bcrypt::verify(&password, hash).unwrap_or(false),
            (None, Some(decoy)) => {
                let _ = bcrypt::verify(&password, decoy);
                false
            }
            (None, None) => false,
        };
        if let Ok(mut remembered) = self.remembered.lock() {
            let kind = if result {
                &mut remembered.accepted
            } else {
                &mut remembered.refused
            };
            if kind.len() >= REMEMBERED_MAX {
                kind.clear();
            }
            kind.insert(key);
        }
        result
    }

    /// The key under which credentials are remembered: it covers the hash,
    /// so that a reload that changes a user's hash forgets them.
    fn key(&self, user: &str, password: &str) -> [u8; 32] {
        let hash = self.users.get(user).map_or("", String::as_str);
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [user, password, hash] {
            context.update(&(part.len() as u64).to_le_bytes());
            context.update(part.as_bytes());
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(context.finish().as_ref());
        key
    }
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
    if let Some(line) = too_deeply_nested(text) {
        return Err((
            String::new(),
            format!(
                "line {line}: nested more than {NESTING_LIMIT} deep; \
                 a web configuration needs a few levels"
            ),
        ));
    }
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
        hash_cost(&user, &hash)?;
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
    let mut files = Vec::new();
    let mut warnings = Vec::new();
    let tls = match file.tls_server_config {
        Some(tls) => Some(Arc::new(tls_config(
            &tls,
            folder,
            &mut files,
            &mut warnings,
        )?)),
        None => None,
    };
    // The costliest hash, so that an unknown user never costs less.
    let decoy = users
        .values()
        .max_by_key(|hash| {
            hash.parse::<bcrypt::HashParts>()
                .map_or(0, |parts| parts.get_cost())
        })
        .cloned();
    Ok(WebConfig {
        tls,
        users,
        decoy,
        headers,
        files,
        warnings,
        remembered: Mutex::new(Remembered::default()),
    })
}

/// The bcrypt cost of user `user`'s hash `hash`, or why it is refused
/// (field, reason): not a bcrypt hash ($2a$, $2b$ or $2y$, cost, 53
/// characters of salt and hash), or too costly to check.
pub fn hash_cost(user: &str, hash: &str) -> Result<u32, (String, String)> {
    let Ok(parts) = hash.parse::<bcrypt::HashParts>() else {
        return Err((
            format!("basic_auth_users.{user}"),
            "not a bcrypt hash (htpasswd -nBC 10 makes one)".to_string(),
        ));
    };
    // Each check of a password holds a thread for the hash's cost, and an
    // unknown user is checked against the costliest hash.
    if parts.get_cost() > MAX_BCRYPT_COST {
        return Err((
            format!("basic_auth_users.{user}"),
            format!(
                "bcrypt cost {} takes too long to check; at most {MAX_BCRYPT_COST} \
                 (htpasswd -nBC 10 makes one of cost 10)",
                parts.get_cost()
            ),
        ));
    }
    Ok(parts.get_cost())
}

/// The line on which collections nest deeper than `NESTING_LIMIT`, if
/// any, quoted text and comments aside: flow collections (`[`, `{`), block
/// sequences opened on one line (`- - -`), or an indentation past what as
/// many block levels take. The parser would hold every level in memory
/// before its own limit refused them.
fn too_deeply_nested(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (number, line) in text.lines().enumerate() {
        let content = line.trim_start_matches(' ');
        if line.len() - content.len() > NESTING_LIMIT * 8 {
            return Some(number + 1);
        }
        let mut entries = content;
        let mut opened = 0;
        while let Some(rest) = entries.strip_prefix('-')
            && (rest.is_empty() || rest.starts_with([' ', '\t']))
        {
            opened += 1;
            if opened > NESTING_LIMIT {
                return Some(number + 1);
            }
            entries = rest.trim_start_matches([' ', '\t']);
        }
        let mut quote = None;
        for character in line.chars() {
            match (quote, character) {
                (Some(open), c) if c == open => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(character),
                (None, '#') => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > NESTING_LIMIT {
                        return Some(number + 1);
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                (None, _) => {}
            }
        }
    }
    None
}

fn tls_config(
    tls: &TlsFile,
    folder: &Path,
    files: &mut Vec<PathBuf>,
    warnings: &mut Vec<String>,
) -> Result<rustls::ServerConfig, (String, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let field = |name: &str| format!("tls_server_config.{name}");
    // Each file bounded and regular, and watched from then on.
    let mut read = |name: &str, file: &str| {
        let path = folder.join(file);
        files.push(path.clone());
        crate::files::read_bounded(&path, FILE_LIMIT)
            .map_err(|e| (field(name), format!("{}: {e}", path.display())))
    };
    let certificate_pem = read("cert_file", &tls.cert_file)?;
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&certificate_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| (field("cert_file"), pem_error(&e)))?;
    if certificates.is_empty() {
        return Err((field("cert_file"), "no certificate in the file".to_string()));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64);
    warnings.extend(validity_warning(&certificates[0], now));
    let key = PrivateKeyDer::from_pem_slice(&read("key_file", &tls.key_file)?)
        .map_err(|e| (field("key_file"), pem_error(&e)))?;
    let client_ca = match &tls.client_ca_file {
        Some(file) => Some(read("client_ca_file", file)?),
        None => None,
    };
    let versions = tls_versions(tls)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| (field("min_version"), e.to_string()))?;
    let builder = match client_verifier(tls, client_ca.as_deref(), provider)? {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier),
    };
    let mut config = builder
        .with_single_cert(certificates, key)
        .map_err(|e| (field("key_file"), e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The TLS versions offered, `min_version` to `max_version`: 1.2 and 1.3
/// by default, nothing older.
fn tls_versions(
    tls: &TlsFile,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, (String, String)> {
    let field = |name: &str| format!("tls_server_config.{name}");
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
    Ok(versions)
}

/// How client certificates are verified (`client_auth_type`), against the
/// roots of `client_ca` (the file's PEM): `None` where they are not asked
/// for.
fn client_verifier(
    tls: &TlsFile,
    client_ca: Option<&[u8]>,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, (String, String)> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let field = |name: &str| format!("tls_server_config.{name}");
    let client_roots = || -> Result<Arc<rustls::RootCertStore>, (String, String)> {
        let Some(pem) = client_ca else {
            return Err((
                field("client_ca_file"),
                "needed to verify client certificates".to_string(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate.map_err(|e| (field("client_ca_file"), pem_error(&e)))?;
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
    match tls.client_auth_type.as_deref().unwrap_or("NoClientCert") {
        "NoClientCert" => Ok(None),
        "VerifyClientCertIfGiven" => Ok(Some(verifier(client_roots()?, true)?)),
        "RequireAndVerifyClientCert" => Ok(Some(verifier(client_roots()?, false)?)),
        other => Err((
            field("client_auth_type"),
            format!(
                "{other:?}: expected NoClientCert, VerifyClientCertIfGiven or \
                 RequireAndVerifyClientCert (certificates that are not verified are not accepted)"
            ),
        )),
    }
}

/// A warning when a server certificate (DER) is outside its validity at
/// `now` (seconds since the epoch): clients will refuse it. `None` when it
/// is valid, or its validity cannot be read (rustls has accepted it).
pub fn validity_warning(certificate: &[u8], now: i64) -> Option<String> {
    let (not_before, not_after) = validity(certificate)?;
    let date = |seconds: i64| {
        let (days, seconds) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
        let (year, month, day) = portstat_core::text::civil_from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60
        )
    };
    if now > not_after {
        Some(format!(
            "tls_server_config.cert_file: the certificate expired at {} ({} days ago); \
             clients that verify it will refuse to connect",
            date(not_after),
            (now - not_after) / 86_400
        ))
    } else if now < not_before {
        Some(format!(
            "tls_server_config.cert_file: the certificate is not valid until {}; \
             clients that verify it will refuse to connect",
            date(not_before)
        ))
    } else {
        None
    }
}

/// A certificate's validity, (notBefore, notAfter) in seconds since the
/// epoch, read from its DER by `x509-cert` (RFC 5280, 4.1.2.5); `None`
/// where it does not parse as a certificate.
fn validity(certificate: &[u8]) -> Option<(i64, i64)> {
    use x509_cert::der::Decode;
    let certificate = x509_cert::Certificate::from_der(certificate).ok()?;
    let validity = certificate.tbs_certificate().validity();
    let seconds = |time: &x509_cert::time::Time| -> Option<i64> {
        i64::try_from(time.to_unix_duration().as_secs()).ok()
    };
    Some((
        seconds(&validity.not_before)?,
        seconds(&validity.not_after)?,
    ))
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

/// What is wrong with a PEM file, in words: the markers it lacks or has
/// wrong as text, not as bytes.
fn pem_error(error: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { end_marker } => format!(
            "a PEM section has no end line \"-----END {}-----\": the file is cut short",
            String::from_utf8_lossy(end_marker)
        ),
        Error::IllegalSectionStart { line } => format!(
            "a PEM section starts with a malformed line {:?}",
            String::from_utf8_lossy(line)
        ),
        Error::NoItemsFound => "no PEM section of the kind expected".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
