//! What the exporter's BPF programs write, decoded: the records of the
//! socket and owner iterators, and the entries of the failure counter's
//! maps. Pure: bytes in, the model's values out.
//!
//! Each layout is declared once, here, with the size of the C struct and
//! the offset of every field the exporter reads; the decoders read at those
//! offsets and nowhere else. The C side declares the same structs in
//! `src/source/bpf/records.bpf.h`, where `_Static_assert(offsetof(…))`
//! makes clang refuse a struct that moved, and a test of the binary holds
//! those assertions and `LAYOUTS` to each other, field by field.

pub mod failures;
pub mod owners;
pub mod sockets;

/// A C struct as the exporter reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Its name in C, without `struct`.
    pub name: &'static str,
    /// `sizeof`.
    pub size: usize,
    /// Each field the exporter reads or writes, with its `offsetof`.
    pub fields: &'static [(&'static str, usize)],
}

/// Declares a C struct's layout as a module of offsets: `SIZE`, a constant
/// named after each field (as C names it), and `LAYOUT`.
macro_rules! layout {
    ($(#[$meta:meta])* pub mod $module:ident = struct $c_name:ident, $size:literal bytes {
        $($field:ident at $offset:literal),+ $(,)?
    }) => {
        $(#[$meta])*
        #[allow(non_upper_case_globals)]
        pub mod $module {
            /// `sizeof`.
            pub const SIZE: usize = $size;
            $(
                #[doc = concat!("`offsetof(struct ", stringify!($c_name), ", ", stringify!($field), ")`.")]
                pub const $field: usize = $offset;
            )+
            /// The whole layout.
            pub const LAYOUT: super::Layout = super::Layout {
                name: stringify!($c_name),
                size: SIZE,
                fields: &[$((stringify!($field), $offset)),+],
            };
        }
    };
}

layout! {
    /// `struct record`: one TCP socket of `iter/tcp`, or one socket of the
    /// walk of shared tables, in native byte order but for the addresses,
    /// which stay in network order. A record of family 0 is the trailer.
    pub mod record = struct record, 72 bytes {
        family at 0,
        state at 1,
        flags at 2,
        fastreuse at 4,
        fastreuseport at 5,
        local_port at 6,
        remote_port at 8,
        bound_dev_if at 12,
        queue_waiting at 16,
        queue_limit at 20,
        tw_entry_stamp at 24,
        tw_ts_recent_stamp at 28,
        inode at 32,
        local at 40,
        remote at 56,
    }
}

layout! {
    /// `struct tagged_record`: a record with the inode of its socket's
    /// namespace, from a walk of a table that several namespaces share.
    pub mod tagged_record = struct tagged_record, 80 bytes {
        record at 0,
        netns at 72,
    }
}

layout! {
    /// `struct marker`: what the walk of shared tables says of a part of
    /// the walk, or of its end.
    pub mod marker = struct marker, 8 bytes {
        kind at 0,
        flags at 1,
        index at 4,
    }
}

layout! {
    /// `struct namespace_entry`: a namespace the walk of shared tables
    /// reports, as the exporter lists it.
    pub mod namespace_entry = struct namespace_entry, 8 bytes {
        range at 0,
        udp at 4,
    }
}

layout! {
    /// `struct owner_record`: one socket a process's descriptor holds, from
    /// `iter/task_file`, in native byte order.
    pub mod owner_record = struct owner_record, 48 bytes {
        tgid at 0,
        netns at 4,
        inode at 8,
        file_refs at 16,
        port at 24,
        family at 26,
        state at 27,
        protocol at 28,
        flags at 29,
        comm at 32,
    }
}

layout! {
    /// `struct failure_key`: failures or connects of one process toward one
    /// destination, in native byte order but for the addresses.
    pub mod failure_key = struct failure_key, 72 bytes {
        netns at 0,
        kind at 4,
        protocol at 5,
        family at 6,
        remote_port at 8,
        cookie at 16,
        local at 24,
        remote at 40,
        comm at 56,
    }
}

layout! {
    /// `struct failure_value`: how many calls a `failure_key` counted, and
    /// whose the last was.
    pub mod failure_value = struct failure_value, 16 bytes {
        count at 0,
        last_tgid at 8,
        several at 12,
    }
}

layout! {
    /// `struct total_key`: counts of one namespace, by kind and protocol.
    pub mod total_key = struct total_key, 16 bytes {
        netns at 0,
        kind at 4,
        protocol at 5,
        cookie at 8,
    }
}

layout! {
    /// `struct name_key`: a connection, in native byte order but for the
    /// addresses.
    pub mod name_key = struct name_key, 56 bytes {
        netns at 0,
        family at 4,
        local_port at 6,
        remote_port at 8,
        local at 12,
        remote at 28,
        cookie at 48,
    }
}

layout! {
    /// `struct name_value`: the process that closed a connection.
    pub mod name_value = struct name_value, 32 bytes {
        tgid at 0,
        comm at 4,
        stamp at 24,
    }
}

/// Every layout the exporter reads.
pub const LAYOUTS: [Layout; 10] = [
    record::LAYOUT,
    tagged_record::LAYOUT,
    marker::LAYOUT,
    namespace_entry::LAYOUT,
    owner_record::LAYOUT,
    failure_key::LAYOUT,
    failure_value::LAYOUT,
    total_key::LAYOUT,
    name_key::LAYOUT,
    name_value::LAYOUT,
];

/// Why bytes are not what a program writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(pub String);

/// Native-order reads of one record's fields: the caller has checked that
/// the record is as long as its layout, whose fields all lie inside it (a
/// test checks every layout).
#[derive(Debug, Clone, Copy)]
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u8(self, at: usize) -> u8 {
        self.0[at]
    }

    fn u16(self, at: usize) -> u16 {
        u16::from_ne_bytes([self.0[at], self.0[at + 1]])
    }

    fn u32(self, at: usize) -> u32 {
        u32::from_ne_bytes([self.0[at], self.0[at + 1], self.0[at + 2], self.0[at + 3]])
    }

    fn u64(self, at: usize) -> u64 {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&self.0[at..at + 8]);
        u64::from_ne_bytes(bytes)
    }

    fn bytes16(self, at: usize) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&self.0[at..at + 16]);
        bytes
    }
}

/// Native-order writes of one record's fields, into a record of its
/// layout's size.
struct FieldsMut<'a>(&'a mut [u8]);

impl FieldsMut<'_> {
    fn put(&mut self, at: usize, bytes: &[u8]) {
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_lies_inside_its_struct_in_order_without_overlap() {
        for layout in LAYOUTS {
            let mut offsets: Vec<usize> = layout.fields.iter().map(|&(_, at)| at).collect();
            assert!(offsets.is_sorted(), "{}: fields out of order", layout.name);
            offsets.push(layout.size);
            for pair in offsets.windows(2) {
                assert!(
                    pair[0] < pair[1],
                    "{}: fields overlap at {}",
                    layout.name,
                    pair[0]
                );
            }
        }
    }

    #[test]
    fn fields_read_and_write_in_native_order() {
        let mut bytes = [0u8; 32];
        let mut fields = FieldsMut(&mut bytes);
        fields.put(0, &0x0102_0304_0506_0708u64.to_ne_bytes());
        fields.put(8, &0xa0b0_c0d0u32.to_ne_bytes());
        fields.put(12, &0xbeefu16.to_ne_bytes());
        fields.put(14, &[7]);
        fields.put(16, &[9; 16]);
        let fields = Fields(&bytes);
        assert_eq!(fields.u64(0), 0x0102_0304_0506_0708);
        assert_eq!(fields.u32(8), 0xa0b0_c0d0);
        assert_eq!(fields.u16(12), 0xbeef);
        assert_eq!(fields.u8(14), 7);
        assert_eq!(fields.bytes16(16), [9; 16]);
    }
}
