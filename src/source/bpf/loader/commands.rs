//! The `bpf()` commands the loader runs: their attribute blocks, laid out
//! as the kernel reads them, and the call.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use aya_obj::generated::bpf_cmd;

/// The `bpf()` attribute blocks of the commands used, laid out as the
/// `union bpf_attr` members of `include/uapi/linux/bpf.h`; the kernel reads
/// as many bytes as it is given and takes the rest as zero.
#[repr(C)]
#[derive(Default)]
pub(super) struct ProgLoad {
    pub(super) prog_type: u32,
    pub(super) insn_cnt: u32,
    pub(super) insns: u64,
    pub(super) license: u64,
    pub(super) log_level: u32,
    pub(super) log_size: u32,
    pub(super) log_buf: u64,
    pub(super) kern_version: u32,
    pub(super) prog_flags: u32,
    pub(super) prog_name: [u8; 16],
    pub(super) prog_ifindex: u32,
    pub(super) expected_attach_type: u32,
    pub(super) prog_btf_fd: u32,
    pub(super) func_info_rec_size: u32,
    pub(super) func_info: u64,
    pub(super) func_info_cnt: u32,
    pub(super) line_info_rec_size: u32,
    pub(super) line_info: u64,
    pub(super) line_info_cnt: u32,
    pub(super) attach_btf_id: u32,
}

#[repr(C)]
#[derive(Default)]
pub(super) struct BtfLoad {
    pub(super) btf: u64,
    pub(super) btf_log_buf: u64,
    pub(super) btf_size: u32,
    pub(super) btf_log_size: u32,
    pub(super) btf_log_level: u32,
    /// Written by the kernel; here so that the block has no padding.
    pub(super) btf_log_true_size: u32,
}

#[repr(C)]
pub(super) struct LinkCreate {
    pub(super) prog_fd: u32,
    pub(super) target_fd: u32,
    pub(super) attach_type: u32,
    pub(super) flags: u32,
}

/// `BPF_RAW_TRACEPOINT_OPEN` of a BTF-enabled program: no name, since the
/// program's `attach_btf_id` names the tracepoint.
#[repr(C)]
pub(super) struct RawTracepointOpen {
    pub(super) name: u64,
    pub(super) prog_fd: u32,
    pub(super) pad: u32,
}

/// `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
pub(super) struct ObjGetInfo {
    pub(super) bpf_fd: u32,
    pub(super) info_len: u32,
    pub(super) info: u64,
}

#[repr(C)]
pub(super) struct IterCreate {
    pub(super) link_fd: u32,
    pub(super) flags: u32,
}

/// One of the attribute blocks above.
pub(super) trait Attributes {}
impl Attributes for ProgLoad {}
impl Attributes for BtfLoad {}
impl Attributes for LinkCreate {}
impl Attributes for IterCreate {}
impl Attributes for RawTracepointOpen {}

/// Runs a `bpf()` command that returns a new descriptor.
pub(super) fn bpf<T: Attributes>(command: bpf_cmd, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is one of the repr(C) blocks above, laid out as the
    // kernel reads it, and outlives the call; every pointer it holds points
    // at memory the caller keeps alive for the call. The call returns a new
    // descriptor or -1.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_int,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just made, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(result as i32) })
}
