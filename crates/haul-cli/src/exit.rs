//! Exit codes: the contract with scripts that run haul.

/// How a run ended, as the process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Every job is done or skipped.
    Success = 0,
    /// Some jobs failed or some manifest lines were bad; the rest is done.
    SomeFailed = 1,
    /// The command line or the input could not be used; nothing was downloaded.
    Usage = 2,
    /// The run could not go on (disk full, output not writable, archive locked or broken).
    Fatal = 3,
    /// Interrupted by Ctrl-C (SIGINT); finished files are kept, `.part` files resume next time.
    Interrupted = 130,
    /// Stopped by SIGTERM (128 + 15, the shell's convention), with the same guarantees.
    Terminated = 143,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit as u8)
    }
}
