//! Process limits: how many transfers fit in the open-file limit.
//!
//! Every transfer holds a socket and, while it writes, its part file; a finish briefly opens
//! the directories of its destination. With `-j 256` under a limit of 64 descriptors, every job
//! would meet EMFILE. So at start the soft limit is raised to the hard one (as the kernel
//! allows without privilege), and the concurrency is lowered to what fits, with a notice.

/// Descriptors a transfer may hold at once (socket, part file, directories while finishing).
const PER_TRANSFER: u64 = 4;
/// Descriptors kept for everything else: the archive (database, WAL, shared memory, reader
/// connection, lock), the duplicate index, the directory lock, the runtime, stdio.
const RESERVED: u64 = 32;

/// The concurrency a run can use, and what to tell the user about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fit {
    pub(crate) concurrency: usize,
    pub(crate) notice: Option<String>,
}

/// Raises the soft open-file limit to the hard one and fits `requested` into it.
pub(crate) fn fit_concurrency(requested: usize) -> Fit {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(current), hard) = (limit.current, limit.maximum)
        && hard.is_none_or(|h| h > current)
    {
        // An unlimited hard limit is capped where the kernel's own nr_open usually is.
        let target = hard.unwrap_or(1 << 20);
        let raised = rustix::process::Rlimit {
            current: Some(target),
            maximum: hard,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = getrlimit(Resource::Nofile);
        }
    }
    fit(requested, limit.current)
}

/// The pure part of [`fit_concurrency`]: `requested` within a soft limit of `open_files`.
fn fit(requested: usize, open_files: Option<u64>) -> Fit {
    let Some(open_files) = open_files else {
        return Fit {
            concurrency: requested,
            notice: None,
        };
    };
    let fits = usize::try_from(open_files.saturating_sub(RESERVED) / PER_TRANSFER)
        .unwrap_or(usize::MAX)
        .max(1);
    if requested <= fits {
        return Fit {
            concurrency: requested,
            notice: None,
        };
    }
    Fit {
        concurrency: fits,
        notice: Some(format!(
            "-j {requested} lowered to {fits}: the open-file limit is {open_files} (raise it with `ulimit -n`)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_within_the_limit() {
        assert_eq!(fit(32, Some(1024)).concurrency, 32);
        assert_eq!(fit(32, None).concurrency, 32);
        let low = fit(256, Some(64));
        assert_eq!(low.concurrency, 8);
        assert!(low.notice.unwrap().contains("-j 256 lowered to 8"));
        assert_eq!(fit(8, Some(10)).concurrency, 1, "never below one");
    }
}
