//! The validity dates of a server certificate (DER), read to warn of one
//! expired or not yet valid, at any moment.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((moment, certificate)) = data.split_first_chunk::<8>() else {
        return;
    };
    let now = i64::from_le_bytes(*moment);
    let _ = portstat_exporter::webconfig::validity_warning(certificate, now);
});
