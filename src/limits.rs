//! Process limits set at start. The soft limit on open files is often 1,024 while the
//! hard one is far higher (systemd: 524,288): every poll, delivery, admin connection
//! and database file takes a descriptor, so the daemon raises the soft limit to the
//! hard one, as systemd advises services to do themselves.

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Returns the limits (soft before,
/// soft now); `Ok(None)` where pollhook does not manage limits (not Linux with glibc).
pub fn raise_open_files() -> std::io::Result<Option<(u64, u64)>> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let before = limit.rlim_cur;
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(Some((before, limit.rlim_cur)))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        Ok(None)
    }
}
