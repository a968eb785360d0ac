//! Unit tests of `webconfig`.

use super::*;

#[test]
fn a_truncated_pem_file_is_said_to_be_cut_short() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let cut = b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n";
    let error = CertificateDer::pem_slice_iter(cut)
        .collect::<Result<Vec<_>, _>>()
        .unwrap_err();
    assert_eq!(
        pem_error(&error),
        r#"a PEM section has no end line "-----END CERTIFICATE-----": the file is cut short"#
    );
}

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
fn a_bcrypt_cost_too_long_to_check_is_refused_naming_the_user() {
    let hash = bcrypt::hash("secret", 4).unwrap();
    let with_cost = |cost: u32| format!("$2b${cost:02}{}", &hash[6..]);
    for cost in [MAX_BCRYPT_COST + 1, 31, 99] {
        let text = format!("basic_auth_users:\n  zzz: '{}'\n", with_cost(cost));
        let (field, reason) = parse(&text, Path::new(".")).unwrap_err();
        assert_eq!(field, "basic_auth_users.zzz");
        assert!(
            reason.contains(&format!("bcrypt cost {cost} takes too long")),
            "{reason}"
        );
    }
    let text = format!(
        "basic_auth_users:\n  prom: '{}'\n",
        with_cost(MAX_BCRYPT_COST)
    );
    assert!(parse(&text, Path::new(".")).is_ok());
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
    assert_eq!(config.remembered(None), Some(false));
    assert_eq!(config.remembered(Some(b"Bearer x")), Some(false));
    assert_eq!(config.remembered(Some(&header("alice:secret"))), None);
    assert!(config.authorizes(Some(&header("alice:secret"))));
    assert_eq!(config.remembered(Some(&header("alice:secret"))), Some(true));
    assert!(!config.authorizes(Some(&header("alice:wrong"))));
    assert!(!config.authorizes(Some(&header("bob:secret"))));
    assert_eq!(config.remembered(Some(&header("bob:secret"))), Some(false));
    assert!(!config.authorizes(None));
    let remembered = config.remembered.lock().unwrap();
    assert_eq!(
        (remembered.accepted.len(), remembered.refused.len()),
        (1, 2)
    );
    drop(remembered);

    // Refused credentials beyond the bound do not push accepted ones out.
    for attempt in 0..REMEMBERED_MAX + 1 {
        config
            .remembered
            .lock()
            .unwrap()
            .refused
            .insert([attempt as u8; 32]);
    }
    assert!(!config.authorizes(Some(&header("alice:wrong again"))));
    assert_eq!(config.remembered(Some(&header("alice:secret"))), Some(true));

    // A reload keeps them while the hash stays, and forgets them when it
    // changes.
    let same = parse(
        &format!("basic_auth_users:\n  alice: '{hash}'\n"),
        Path::new("."),
    )
    .unwrap();
    same.remember_accepted_from(&config);
    assert_eq!(same.remembered(Some(&header("alice:secret"))), Some(true));
    let changed = parse(
        &format!(
            "basic_auth_users:\n  alice: '{}'\n",
            bcrypt::hash("secret", 4).unwrap()
        ),
        Path::new("."),
    )
    .unwrap();
    changed.remember_accepted_from(&config);
    assert_eq!(changed.remembered(Some(&header("alice:secret"))), None);
}

#[test]
fn deeply_nested_brackets_are_refused_before_parsing() {
    let text = format!(
        "basic_auth_users: {}{}\n",
        "[".repeat(60_000),
        "]".repeat(60_000)
    );
    let started = std::time::Instant::now();
    let (field, reason) = parse(&text, Path::new(".")).unwrap_err();
    assert_eq!(field, "");
    assert!(
        reason.contains("line 1: nested more than 32 deep"),
        "{reason}"
    );
    // Block sequences opened on one line, 1 MB of them, and indentation
    // deeper than as many levels take.
    let dashes = "- ".repeat((FILE_LIMIT / 2) as usize - 1);
    let (_, reason) = parse(&dashes, Path::new(".")).unwrap_err();
    assert!(
        reason.contains("line 1: nested more than 32 deep"),
        "{reason}"
    );
    let (_, reason) = parse(
        &format!("basic_auth_users:\n{}a: b\n", " ".repeat(257)),
        Path::new("."),
    )
    .unwrap_err();
    assert!(
        reason.contains("line 2: nested more than 32 deep"),
        "{reason}"
    );
    // What a configuration holds passes: a list of lists, and dashes
    // inside a value.
    assert!(too_deeply_nested("a:\n  - - x\n    - y\n  - -z\nb: 'a - - b'\n").is_none());
    println!("refused in {:?}", started.elapsed());
    // Brackets in quotes and comments are text.
    assert!(
        too_deeply_nested(&format!("a: '{}' # {}\n", "[".repeat(99), "{".repeat(99))).is_none()
    );
    assert_eq!(
        too_deeply_nested(&format!("a:\n b: {}\n", "[".repeat(33))),
        Some(2)
    );
}

/// A DER element of `tag` holding `content`.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut element = vec![tag];
    match content.len() {
        length @ 0..0x80 => element.push(length as u8),
        length => element.extend([0x82, (length >> 8) as u8, length as u8]),
    }
    element.extend(content);
    element
}

/// A certificate whose validity is the two times given as (tag,
/// text): an empty issuer and subject, a P-256 key of no points, and an
/// empty signature, which nothing here checks.
fn certificate(not_before: (u8, &[u8]), not_after: (u8, &[u8])) -> Vec<u8> {
    // ecdsa-with-SHA256; id-ecPublicKey with prime256v1.
    let signature_algorithm = tlv(
        0x30,
        &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02],
    );
    let key_algorithm = tlv(
        0x30,
        &[
            0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
            0xce, 0x3d, 0x03, 0x01, 0x07,
        ],
    );
    let name = tlv(0x30, &[]);
    let validity = tlv(
        0x30,
        &[
            tlv(not_before.0, not_before.1),
            tlv(not_after.0, not_after.1),
        ]
        .concat(),
    );
    let key = tlv(0x30, &[key_algorithm, tlv(0x03, &[0x00, 0x04])].concat());
    let tbs = tlv(
        0x30,
        &[
            tlv(0xa0, &tlv(0x02, &[2])),
            tlv(0x02, &[1]),
            signature_algorithm.clone(),
            name.clone(),
            validity,
            name,
            key,
        ]
        .concat(),
    );
    tlv(
        0x30,
        &[tbs, signature_algorithm, tlv(0x03, &[0x00])].concat(),
    )
}

#[test]
fn validity_from_der() {
    let certificate = certificate((0x17, b"200101000000Z"), (0x18, b"20200102000000Z"));
    let (not_before, not_after) = validity(&certificate).unwrap();
    assert_eq!(not_after - not_before, 86_400);
    assert_eq!(not_before, 18_262 * 86_400);
    assert!(validity_warning(&certificate, not_before + 1).is_none());
    let expired = validity_warning(&certificate, not_after + 3 * 86_400).unwrap();
    assert!(
        expired.contains("expired at 2020-01-02T00:00:00Z (3 days ago)"),
        "{expired}"
    );
    assert!(
        validity_warning(&certificate, 0)
            .unwrap()
            .contains("not valid until 2020-01-01")
    );
    assert_eq!(validity(&certificate[..20]), None);
}

/// Times that are not digits, multi-byte characters among them, are
/// no validity, never a panic.
#[test]
fn validity_of_malformed_times_is_none() {
    for (tag, text) in [
        (0x17, "2é204190329Z"),
        (0x18, "2é2204190329Z"),
        (0x18, "20200101000000é"),
        (0x17, "20010100000"),
        (0x17, "209901000000Z"),
    ] {
        let certificate = certificate((tag, text.as_bytes()), (0x17, b"300101000000Z"));
        assert_eq!(validity(&certificate), None, "{text}");
        assert_eq!(validity_warning(&certificate, 0), None, "{text}");
    }
}

fn encode_for_test(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
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
