//! Every entry of a BPF hash map in a few system calls: `BPF_MAP_LOOKUP_BATCH`
//! (Linux 5.6) copies up to `BATCH` entries a call, where aya's iterator
//! makes two calls an entry (the next key, then its value). A map of
//! 12,000 connection names is then read in 3 calls rather than 24,000.
//!
//! Entries are handed over a batch at a time, from a buffer of `BATCH`
//! entries that is reused: memory follows the batch, not the map. Where the
//! kernel refuses the command for the map (`EINVAL`, `ENOTSUPP`), the caller
//! is told so and reads the map entry by entry instead.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use aya::maps::{HashMap, Map, MapData, MapError};

/// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// The kernel's `ENOTSUPP` (524), which user space has no name for.
const ENOTSUPP: i32 = 524;

/// How many entries one call asks for.
const BATCH: usize = 1024;

/// `union bpf_attr` as the batch commands read it.
#[repr(C, align(8))]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// What a batched read of a map came to.
#[derive(Debug)]
enum BatchError {
    /// The kernel has no batch read for this map: read it entry by entry.
    Unsupported,
    /// The read failed part way: what was handed over is not the whole map.
    Failed(io::Error),
}

/// Hands every entry of the hash map behind `map` to `each`, `BATCH` at a
/// time. `K` and `V` must be of the map's exact key and value sizes (plain
/// data: the kernel writes them byte for byte into room for `BATCH` of
/// each), which `BatchedHash::new` has checked.
///
/// Entries added or removed meanwhile may be missed or seen, as with any
/// walk of a map that changes; none is seen twice, since each call
/// resumes at the next bucket.
fn for_each_entry<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    mut each: impl FnMut(&K, &V),
) -> Result<(), BatchError> {
    let mut keys: Vec<K> = Vec::with_capacity(BATCH);
    let mut values: Vec<V> = Vec::with_capacity(BATCH);
    // The hash maps' position: a bucket index, 4 bytes; room for 8.
    let mut token = [0u64; 1];
    let mut next = [0u64; 1];
    let mut capacity = BATCH;
    let mut first = true;
    loop {
        keys.clear();
        values.clear();
        keys.reserve(capacity);
        values.reserve(capacity);
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(capacity).unwrap_or(u32::MAX),
            map_fd: u32::try_from(map.as_raw_fd()).unwrap_or(u32::MAX),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `union bpf_attr` prefix of the size
        // passed; `keys` and `values` have room for `attr.count` entries of
        // the map's key and value sizes, and the tokens for a bucket index.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let error = (result < 0).then(io::Error::last_os_error);
        let filled = (attr.count as usize).min(capacity);
        match error.as_ref().and_then(io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {
                // SAFETY: the kernel wrote `filled` whole entries of each.
                unsafe {
                    keys.set_len(filled);
                    values.set_len(filled);
                }
                for (key, value) in keys.iter().zip(&values) {
                    each(key, value);
                }
                if error.is_some() {
                    // ENOENT: the last buckets were read.
                    return Ok(());
                }
                token = next;
                first = false;
            }
            // One bucket holds more entries than asked for: ask for more.
            Some(libc::ENOSPC) if capacity < 1 << 20 => capacity *= 4,
            Some(libc::EINVAL | ENOTSUPP) if first => return Err(BatchError::Unsupported),
            _ => {
                return Err(BatchError::Failed(
                    error.unwrap_or_else(|| io::Error::other("batch read")),
                ));
            }
        }
    }
}

/// A hash map of the programs', with a descriptor of its own for reading
/// it whole in batches.
pub struct BatchedHash<K, V> {
    /// The map, for look-ups, writes and removals.
    pub map: HashMap<MapData, K, V>,
    batch: OwnedFd,
}

impl<K: aya::Pod, V: aya::Pod> BatchedHash<K, V> {
    /// The hash map of `data`, an LRU one where `lru`: `K` and `V` of the
    /// map's key and value sizes, or an error.
    pub fn new(data: MapData, lru: bool) -> Result<BatchedHash<K, V>, MapError> {
        let batch = data.fd().as_fd().try_clone_to_owned().map_err(|io_error| {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error,
            })
        })?;
        let map = if lru {
            HashMap::try_from(Map::LruHashMap(data))?
        } else {
            HashMap::try_from(Map::HashMap(data))?
        };
        Ok(BatchedHash { map, batch })
    }

    /// Hands every entry to `each`: in batches, or entry by entry where
    /// the kernel has no batch read for the map.
    pub fn for_each(&self, mut each: impl FnMut(&K, &V)) -> Result<(), MapError> {
        match for_each_entry(self.batch.as_fd(), &mut each) {
            Ok(()) => Ok(()),
            Err(BatchError::Unsupported) => {
                for entry in self.map.iter() {
                    let (key, value) = entry?;
                    each(&key, &value);
                }
                Ok(())
            }
            Err(BatchError::Failed(io_error)) => {
                Err(MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_lookup_batch",
                    io_error,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attribute_is_the_kernel_s_batch_layout() {
        // `struct { in_batch, out_batch, keys, values, count, map_fd,
        // elem_flags, flags }` in `union bpf_attr`.
        assert_eq!(std::mem::size_of::<BatchAttr>(), 56);
        assert_eq!(std::mem::offset_of!(BatchAttr, count), 32);
        assert_eq!(std::mem::offset_of!(BatchAttr, map_fd), 36);
        assert_eq!(std::mem::offset_of!(BatchAttr, elem_flags), 40);
    }
}
