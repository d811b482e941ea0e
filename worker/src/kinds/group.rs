//! An exec attempt's processes: a process group of their own, stopped as a whole, watched by
//! a forked watchdog that kills the group when the worker dies, even by SIGKILL.
//!
//! Why a watchdog: a parent-death signal reaches only the worker's direct child, so what
//! that child started would live on, orphaned, beside the next attempt; the group must be
//! killed by a process that outlives the worker. This crate is a library linked into
//! custom workers, so it cannot re-execute a helper binary of its own, and a shell helper
//! would tie every worker to `/bin/sh`. So the worker forks the watchdog itself. The
//! watchdog never executes a program: being a fork of a multi-threaded process, it makes
//! only async-signal-safe calls (no allocation, no locks). It waits on a pipe whose write
//! end only the worker keeps (the program writes its pid there before it executes, and the
//! end is closed on exec); when the worker dies the kernel closes it, the read returns end
//! of file, and the watchdog SIGKILLs the group. At the end of an attempt the worker SIGKILLs
//! the watchdog and reaps it.
//!
//! A process that leaves the group (`setsid`, `setpgid`, daemons) is not tracked.
//!
//! A group id is the leader's pid, and a pid is reused once nothing holds it: the group is
//! signalled only while its leader is not reaped or right after a check found a live member
//! (which holds the id), and never once it was seen empty.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::limits::{EXEC_GROUP_CHECK_MAX_MS, EXEC_KILLED_WAIT_MS};

/// File descriptors a watchdog closes, at most, where it cannot close them in one call: a
/// limit of a billion would take minutes, and a worker holds far fewer.
const FDS_CLOSED_MAX: RawFd = 1 << 16;

/// Forked before the attempt's process: it kills the group when the worker dies.
pub(crate) struct Watchdog {
    pid: Pid,
    /// The write end of the watched pipe. Close-on-exec, so no program inherits it.
    pipe: io::PipeWriter,
}

impl Watchdog {
    pub(crate) fn start() -> io::Result<Self> {
        let (reader, writer) = io::pipe()?;
        let fd_limit = fd_limit();
        // SAFETY: the child runs `watch`, which never returns and makes only
        // async-signal-safe calls (other threads of this process may hold locks the child's
        // copy of memory can never release).
        match unsafe { fork() }.map_err(io::Error::from)? {
            ForkResult::Child => watch(reader.as_raw_fd(), fd_limit),
            ForkResult::Parent { child } => Ok(Self { pid: child, pipe: writer }),
        }
    }

    /// Starts `command` as the leader of a new process group, watched by this watchdog.
    pub(crate) fn spawn(self, command: &mut Command) -> io::Result<GroupChild> {
        let pipe = self.pipe.as_raw_fd();
        // SAFETY: runs in the child between fork and exec; setpgid, prctl, getpid and write
        // are async-signal-safe, and it touches no memory shared with the parent.
        unsafe {
            command.pre_exec(move || lead_new_group(pipe));
        }
        let child = command.spawn()?;
        let group = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .filter(|id| *id > 1)
            .ok_or_else(|| io::Error::other("the started process has no pid"))?;
        Ok(GroupChild { child, group: Pid::from_raw(group), leader_reaped: false, empty: false, _watchdog: self })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // The attempt is over: the watchdog must not signal the group's id later, when it
        // may be another's.
        let _ = kill(self.pid, Signal::SIGKILL);
        // It dies at once (it only waits on a pipe); reaping it leaves no zombie.
        while let Err(Errno::EINTR) = waitpid(self.pid, None) {}
    }
}

/// The attempt's leader process and its group. Dropped before the attempt ended (its future
/// dropped), it SIGKILLs the group.
pub(crate) struct GroupChild {
    pub(crate) child: Child,
    /// The group's id: the leader's pid.
    group: Pid,
    leader_reaped: bool,
    /// Seen with no live member: never signalled again.
    empty: bool,
    /// Dropped after the group is killed (fields drop after `drop`).
    _watchdog: Watchdog,
}

impl GroupChild {
    /// Waits for the leader to exit (and reaps it).
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await?;
        self.leader_reaped = true;
        Ok(status)
    }

    /// SIGTERM to the group, then SIGKILL once `grace` is over if any of it is left.
    /// Returns when the leader is reaped and no member is left, or a little after SIGKILL.
    pub(crate) async fn stop(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.signal(Signal::SIGTERM);
        if tokio::time::timeout_at(deadline, self.wait()).await.is_ok() && self.until_empty(deadline).await {
            return;
        }
        self.kill().await;
    }

    /// Once the leader has exited: stops what it left running in its group like
    /// [`stop`](Self::stop). Whether anything was left.
    pub(crate) async fn stop_leftovers(&mut self, grace: Duration) -> bool {
        if self.check_empty().await {
            return false;
        }
        self.signal(Signal::SIGTERM);
        if !self.until_empty(Instant::now() + grace).await {
            self.kill().await;
        }
        true
    }

    /// SIGKILL to the group (right after a check that found it alive, or before the leader
    /// is reaped), then waits a little for it to go.
    async fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_millis(EXEC_KILLED_WAIT_MS);
        if tokio::time::timeout_at(deadline, self.wait()).await.is_ok() {
            self.until_empty(deadline).await;
        }
    }

    /// Checks until no member is left or `deadline` passes; whether none is.
    async fn until_empty(&mut self, deadline: Instant) -> bool {
        let mut pause = Duration::from_millis(5);
        loop {
            if self.check_empty().await {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(EXEC_GROUP_CHECK_MAX_MS));
        }
    }

    /// Whether no live process is left in the group; never before the leader is reaped
    /// (tokio reaps it; until then its pid holds the group's id). Zombies do not count: once
    /// their parent died they wait for an init, which may never reap them.
    async fn check_empty(&mut self) -> bool {
        if self.empty || !self.leader_reaped {
            return self.empty;
        }
        let empty = match killpg(self.group, None::<Signal>) {
            Err(Errno::ESRCH) => true,
            _ => {
                let group = self.group.as_raw();
                tokio::task::spawn_blocking(move || only_zombies_in(group)).await.unwrap_or(false)
            }
        };
        if empty {
            self.empty = true;
            reap_orphans(self.group);
        }
        empty
    }

    fn signal(&self, signal: Signal) {
        if !self.empty {
            let _ = killpg(self.group, signal);
        }
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// In the attempt's process, before it executes the program.
fn lead_new_group(watchdog: RawFd) -> io::Result<()> {
    // SAFETY: setpgid and getpid are plain system calls.
    if unsafe { libc::setpgid(0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // If the worker dies before the watchdog has the group, the leader at least dies too.
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    // The watchdog learns the group before the program runs, so nothing the program starts
    // escapes it. Four bytes to a pipe are written at once or not at all.
    let pid = unsafe { libc::getpid() }.to_ne_bytes();
    // SAFETY: writes from a live stack buffer of that length.
    let written = unsafe { libc::write(watchdog, pid.as_ptr().cast(), pid.len()) };
    if written != pid.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The watchdog's whole life, in the forked child. Only async-signal-safe calls.
fn watch(pipe: RawFd, fd_limit: RawFd) -> ! {
    // SAFETY: system calls on this process's own descriptors, signals and group, with stack
    // buffers; `_exit` ends the process without running anything of the parent's.
    unsafe {
        // Out of the worker's group, and deaf to the usual stop signals: a Ctrl-C or a
        // SIGTERM meant for the worker must not end the watch while the worker drains.
        libc::setpgid(0, 0);
        for signal in [libc::SIGHUP, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGPIPE] {
            libc::signal(signal, libc::SIG_IGN);
        }
        // Holding a copy of another descriptor (another job's output pipe caught between
        // fork and exec, another watchdog's pipe) would keep it open.
        close_all_but(pipe, fd_limit);
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_NAME, c"sluice-watchdog".as_ptr());
        let mut group = [0u8; 4];
        let mut got = 0;
        while got < group.len() {
            let read = libc::read(pipe, group.as_mut_ptr().add(got).cast(), group.len() - got);
            match read {
                // The worker went before the program started: there is no group to kill.
                0 => libc::_exit(0),
                n if n > 0 => got += n as usize,
                _ if Errno::last_raw() == libc::EINTR => {}
                _ => libc::_exit(1),
            }
        }
        let group = i32::from_ne_bytes(group);
        let mut byte = 0u8;
        loop {
            let read = libc::read(pipe, (&raw mut byte).cast(), 1);
            if read == 0 || (read < 0 && Errno::last_raw() != libc::EINTR) {
                break;
            }
        }
        // End of file: the worker is gone. (Never -1 or 0: that would be every process, or ours.)
        if group > 1 {
            libc::kill(-group, libc::SIGKILL);
        }
        libc::_exit(0)
    }
}

/// Closes every descriptor but `keep`.
unsafe fn close_all_but(keep: RawFd, fd_limit: RawFd) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: close_range(2) only closes descriptors of this process.
        let below =
            if keep > 0 { unsafe { libc::syscall(libc::SYS_close_range, 0u32, keep as u32 - 1, 0u32) } } else { 0 };
        let above = unsafe { libc::syscall(libc::SYS_close_range, keep as u32 + 1, u32::MAX, 0u32) };
        if below == 0 && above == 0 {
            return;
        }
    }
    // Kernels before 5.9, other systems.
    for fd in (0..fd_limit).filter(|fd| *fd != keep) {
        // SAFETY: closing a descriptor number, open or not.
        unsafe { libc::close(fd) };
    }
}

/// How many descriptors the watchdog may have to close one by one (read before forking).
fn fd_limit() -> RawFd {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return FDS_CLOSED_MAX;
    }
    RawFd::try_from(limit.rlim_cur).unwrap_or(FDS_CLOSED_MAX).min(FDS_CLOSED_MAX)
}

/// Whether every process /proc lists in `group` is a zombie; `false` when /proc cannot say.
#[cfg(target_os = "linux")]
fn only_zombies_in(group: i32) -> bool {
    // A /proc of another pid namespace would list other processes under the same numbers.
    let ours = std::fs::read_link("/proc/self").ok().and_then(|link| link.to_str()?.parse::<u32>().ok());
    if ours != Some(std::process::id()) {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else { continue };
        // Gone meanwhile: not alive.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
        let Some((_, fields)) = stat.rsplit_once(')') else { return false };
        let mut fields = fields.split_whitespace();
        let (state, pgrp) = (fields.next(), fields.nth(1));
        if pgrp.and_then(|pgrp| pgrp.parse::<i32>().ok()) == Some(group) && !matches!(state, Some("Z" | "X")) {
            return false;
        }
    }
    true
}

#[cfg(not(target_os = "linux"))]
fn only_zombies_in(_group: i32) -> bool {
    false
}

/// Reaps the group's dead members that are this process's children: members orphaned while
/// the worker runs as PID 1 (or a subreaper) would otherwise stay zombies. Only once the
/// leader is reaped: it is tokio's to reap.
#[cfg(target_os = "linux")]
fn reap_orphans(group: Pid) {
    use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
    while let Ok(status) = waitid(Id::PGid(group), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn reap_orphans(_group: Pid) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watchdog_holds_only_its_pipe() {
        // A descriptor the watchdog must not keep.
        let _open = std::fs::File::open("/proc/self/stat").unwrap();
        let watchdog = Watchdog::start().unwrap();
        let fds = format!("/proc/{}/fd", watchdog.pid);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let open = std::fs::read_dir(&fds).map(|dir| dir.count()).unwrap_or(usize::MAX);
            if open == 1 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the watchdog keeps {open} descriptors open");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
