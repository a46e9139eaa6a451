//! Signals delivered into the loop through a self-pipe.
//!
//! The handler only writes the signal number into a non-blocking pipe
//! (async-signal-safe); the reactor polls the read end like any socket and
//! the daemon acts on SIGTERM/SIGINT (graceful stop), SIGHUP (reload) and
//! SIGUSR1 (run the queue) and SIGUSR2 (a sendmail drop is waiting) between
//! events. SIGPIPE is ignored so a peer that
//! closes early gives EPIPE instead of killing the process.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};

static WRITE_FD: AtomicI32 = AtomicI32::new(-1);

pub const HANDLED: [i32; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; the buffer is a local byte.
        unsafe {
            libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
        }
    }
}

pub struct SignalPipe {
    read: i32,
}

impl SignalPipe {
    pub fn install() -> io::Result<SignalPipe> {
        let mut fds = [0i32; 2];
        // SAFETY: plain syscalls on owned descriptors.
        unsafe {
            if libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) != 0 {
                return Err(io::Error::last_os_error());
            }
            let old = WRITE_FD.swap(fds[1], Ordering::Relaxed);
            if old >= 0 {
                libc::close(old);
            }
            for sig in HANDLED {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        Ok(SignalPipe { read: fds[0] })
    }

    pub fn read_fd(&self) -> i32 {
        self.read
    }

    /// The signals that arrived since the last call, in order.
    pub fn drain(&mut self) -> Vec<i32> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: reading into a local buffer from our own pipe.
            let n =
                unsafe { libc::read(self.read, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n <= 0 {
                break;
            }
            // 0 < n <= buf.len(): read(2) fills at most the buffer.
            let n = usize::try_from(n).unwrap_or(0);
            out.extend(buf.iter().take(n).map(|&b| b as i32));
        }
        out
    }
}
