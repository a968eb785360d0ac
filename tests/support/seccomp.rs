//! Seccomp filters that make a command's system calls fail or wait, as a
//! kernel or a container policy would, and its descriptor limit.

use super::*;

/// A seccomp filter's statement: `code` with operand `k`.
fn statement(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A seccomp filter's jump: past `jt` statements when the accumulator is
/// `k`, past `jf` when not.
fn jump(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// A filter statement that loads a word of `struct seccomp_data`.
const FILTER_LOAD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
/// A filter statement that returns a verdict.
const FILTER_RETURN: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Installs a seccomp filter in `command`'s process that fails the system
/// call `number` with `errno`; with `first_argument`, only calls whose first
/// argument is that value.
pub fn refuse_syscall(
    command: &mut Command,
    number: libc::c_long,
    first_argument: Option<u32>,
    errno: i32,
) {
    let (load, ret) = (FILTER_LOAD, FILTER_RETURN);
    let allow = statement(ret, libc::SECCOMP_RET_ALLOW);
    let refuse = statement(ret, libc::SECCOMP_RET_ERRNO | errno as u32);
    // struct seccomp_data: nr at 0, arch at 4, args at 16.
    let mut program = vec![
        statement(load, 4),
        jump(0xc000_003e, 1, 0), // AUDIT_ARCH_X86_64
        allow,
        statement(load, 0),
    ];
    match first_argument {
        Some(argument) => program.extend([
            jump(number as u32, 0, 3),
            statement(load, 16),
            jump(argument, 0, 1),
            refuse,
            allow,
        ]),
        None => program.extend([jump(number as u32, 0, 1), refuse, allow]),
    }
    // SAFETY: prctl is async-signal-safe, and the program, built before the
    // fork, lives in the closure for the call.
    unsafe {
        command.pre_exec(move || {
            let filter = libc::sock_fprog {
                len: program.len() as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &filter as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The descriptor the process of a `hold_syscall` command keeps its
/// seccomp listener at, for the test to take (`pidfd_getfd`).
const HELD_CALLS_FD: i32 = 900;

/// Makes every `number` system call of `command`'s process wait in the
/// kernel until the test lets it go (seccomp's user notification): a fixed
/// point in the process's start, whatever the machine's load. Take the
/// calls with `HeldCalls::of` once it is spawned.
pub fn hold_syscall(command: &mut Command, number: libc::c_long) {
    let (load, ret) = (FILTER_LOAD, FILTER_RETURN);
    let program = [
        statement(load, 4),
        jump(0xc000_003e, 1, 0), // AUDIT_ARCH_X86_64
        statement(ret, libc::SECCOMP_RET_ALLOW),
        statement(load, 0),
        jump(number as u32, 0, 1),
        statement(ret, libc::SECCOMP_RET_USER_NOTIF),
        statement(ret, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: prctl, syscall and dup2 are async-signal-safe, and the
    // program, built before the fork, lives in the closure for the call.
    unsafe {
        command.pre_exec(move || {
            let filter = libc::sock_fprog {
                len: program.len() as u16,
                filter: program.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let listener = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &filter as *const libc::sock_fprog,
            );
            // The copy survives exec (dup2 clears close-on-exec).
            if listener < 0 || libc::dup2(listener as i32, HELD_CALLS_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The system calls `hold_syscall` holds in a process.
pub struct HeldCalls(std::os::fd::OwnedFd);

impl HeldCalls {
    /// Takes the held calls of process `pid`, spawned with `hold_syscall`.
    pub fn of(pid: u32) -> HeldCalls {
        use std::os::fd::FromRawFd;
        // SAFETY: plain system calls; the descriptors returned are ours.
        unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
            assert!(
                pidfd >= 0,
                "pidfd_open: {}",
                std::io::Error::last_os_error()
            );
            let pidfd = std::os::fd::OwnedFd::from_raw_fd(pidfd as i32);
            let listener =
                libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), HELD_CALLS_FD, 0);
            assert!(
                listener >= 0,
                "pidfd_getfd: {}",
                std::io::Error::last_os_error()
            );
            HeldCalls(std::os::fd::OwnedFd::from_raw_fd(listener as i32))
        }
    }

    /// Waits for the next held call; its id, to let it go with.
    pub fn next(&self) -> std::io::Result<u64> {
        // SAFETY: an all-zero seccomp_notif is valid, and the kernel fills it.
        let mut notification: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: the listener is ours; the struct outlives the call.
        if unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                &mut notification,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(notification.id)
    }

    /// Lets the held call `id` go on as if it had not been held. A call a
    /// signal interrupted meanwhile is gone: it is held again when the
    /// process makes it again.
    pub fn release(&self, id: u64) {
        let mut response = libc::seccomp_notif_resp {
            id,
            val: 0,
            error: 0,
            flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        };
        // SAFETY: the listener is ours; the struct outlives the call.
        unsafe {
            libc::ioctl(
                self.0.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND,
                &mut response,
            )
        };
    }

    /// Lets every call from now on go, on a thread that ends with the
    /// process.
    pub fn release_all(self) {
        std::thread::spawn(move || {
            while let Ok(id) = self.next() {
                self.release(id);
            }
        });
    }
}

/// Makes `command` fail to open netlink sockets with `errno`, as a seccomp
/// policy or a kernel without netlink would.
pub fn refuse_netlink(command: &mut Command, errno: i32) {
    refuse_syscall(
        command,
        libc::SYS_socket,
        Some(libc::AF_NETLINK as u32),
        errno,
    );
}

/// Starts `command` with at most `descriptors` open files, soft and hard,
/// as `ulimit -n` would.
pub fn limit_descriptors(command: &mut Command, descriptors: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: descriptors,
                rlim_max: descriptors,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}
