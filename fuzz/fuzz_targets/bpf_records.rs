//! What the BPF programs write: socket records, tagged records, owner
//! records, markers and the failure counter's map entries, from any bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portstat_core::parse::bpf::failures::{
    FailureKey, FailureValue, NameKey, NameValue, TotalKey, failure_from_entry, name_from_entry,
    name_key, total_from_entry,
};
use portstat_core::parse::bpf::owners::parse_owner_record;
use portstat_core::parse::bpf::sockets::{Marker, parse_records, parse_tagged_records};
use portstat_core::parse::bpf::{
    failure_key, failure_value, marker, name_key as name_key_layout, name_value, total_key,
};
use portstat_core::model::PortFailureCounts;

/// The first `N` bytes of `data`, zero-padded.
fn first<const N: usize>(data: &[u8]) -> [u8; N] {
    let mut bytes = [0; N];
    let length = data.len().min(N);
    bytes[..length].copy_from_slice(&data[..length]);
    bytes
}

fuzz_target!(|data: &[u8]| {
    // The clock is the first bytes' guess, so that TIME_WAIT ages wrap.
    let now_ms = u64::from_ne_bytes(first(data));
    let mut sockets = Vec::new();
    let _ = parse_records(data, now_ms, &mut sockets);
    let _ = parse_tagged_records(data, now_ms, &mut |_, _| {});
    for record in data.chunks(48) {
        let _ = parse_owner_record(record);
    }
    let _ = Marker::decode(&first::<{ marker::SIZE }>(data));

    let key = FailureKey::decode(&first::<{ failure_key::SIZE }>(data));
    assert_eq!(FailureKey::decode(&key.encode()), key);
    let value = FailureValue::decode(&first::<{ failure_value::SIZE }>(data));
    let _ = failure_from_entry(&key, &value);
    let total = TotalKey::decode(&first::<{ total_key::SIZE }>(data));
    total_from_entry(&total, value.count, &mut PortFailureCounts::default());
    let name = NameKey::decode(&first::<{ name_key_layout::SIZE }>(data));
    assert_eq!(NameKey::decode(&name.encode()), name);
    let named = NameValue::decode(&first::<{ name_value::SIZE }>(data));
    // A name read back is found again under the key it makes.
    if let Some((netns, connection, connector)) = name_from_entry(&name, &named) {
        let again = name_key(netns, name.cookie, &connection, connector.ipv4_mapped);
        assert!(again.is_some());
    }
});
