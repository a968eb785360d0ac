//! The few numbers of Linux's user-space ABI the parsers read: address
//! families, protocols, and the error codes of `asm-generic/errno-base.h`,
//! which every architecture shares. The binary classifies error codes with
//! `libc`'s own, which also knows the architectures whose higher codes
//! differ.

/// `AF_UNSPEC`: no address family, both in a request.
pub const AF_UNSPEC: i32 = 0;
/// `AF_INET`: IPv4.
pub const AF_INET: i32 = 2;
/// `AF_INET6`: IPv6.
pub const AF_INET6: i32 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: i32 = 6;
/// `IPPROTO_UDP`.
pub const IPPROTO_UDP: i32 = 17;

/// `EPERM`: not permitted.
pub const EPERM: i32 = 1;
/// `ENOENT`: no such entry (a netlink family or diag module missing).
pub const ENOENT: i32 = 2;
/// `EINTR`: interrupted.
pub const EINTR: i32 = 4;
/// `EBUSY`: busy.
pub const EBUSY: i32 = 16;
