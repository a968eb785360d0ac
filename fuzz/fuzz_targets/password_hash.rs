//! A user's bcrypt hash in the web configuration, then a password checked
//! against it: the hash's text before the first NUL, the password after.
#![no_main]
use libfuzzer_sys::fuzz_target;

/// Standard base64, as an `Authorization: Basic` header carries it.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = String::new();
    for chunk in bytes.chunks(3) {
        let value = chunk
            .iter()
            .enumerate()
            .fold(0u32, |value, (index, &byte)| value | u32::from(byte) << (16 - 8 * index));
        for index in 0..4 {
            if index <= chunk.len() {
                text.push(ALPHABET[(value >> (18 - 6 * index) & 63) as usize] as char);
            } else {
                text.push('=');
            }
        }
    }
    text
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&byte| byte == 0).unwrap_or(data.len());
    let (hash, password) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    let hash = String::from_utf8_lossy(hash);
    let Ok(cost) = portstat_exporter::webconfig::hash_cost("fuzz", &hash) else {
        return;
    };
    // Low costs only, so that each run takes milliseconds.
    if cost > 5 {
        return;
    }
    let yaml = format!("basic_auth_users:\n  fuzz: '{}'\n", hash.replace('\'', "''"));
    let Ok(config) = portstat_exporter::webconfig::parse(&yaml, std::path::Path::new("/nonexistent"))
    else {
        return;
    };
    let mut credentials = b"fuzz:".to_vec();
    credentials.extend_from_slice(password);
    let header = format!("Basic {}", base64(&credentials));
    let _ = config.authorizes(Some(header.as_bytes()));
});
