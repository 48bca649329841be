//! `--resource-limit`: rlimits for the jailer and so for spry, hard and soft alike
//! so the jailed process cannot raise them again.

use crate::error::JailError;

/// Firecracker's `no-file` bound when none is given.
const DEFAULT_NO_FILE: u64 = 2048;

/// The limits to install.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_FSIZE`: the largest file spry may write, in bytes (none: unchanged).
    pub fsize: Option<u64>,
    /// `RLIMIT_NOFILE`: one more than the highest descriptor number spry may open.
    pub no_file: u64,
}

impl Limits {
    /// Parses `fsize=<n>` / `no-file=<n>` arguments; a later one overrides an earlier one.
    pub fn parse(args: &[String]) -> Result<Limits, JailError> {
        let mut limits = Limits {
            fsize: None,
            no_file: DEFAULT_NO_FILE,
        };
        for arg in args {
            let bad = || JailError::ResourceLimit(arg.clone());
            let (name, value) = arg.split_once('=').ok_or_else(bad)?;
            let value: u64 = value.parse().map_err(|_| bad())?;
            match name {
                "fsize" => limits.fsize = Some(value),
                "no-file" => limits.no_file = value,
                _ => return Err(bad()),
            }
        }
        Ok(limits)
    }

    /// Sets the limits on this process; spry inherits them across exec.
    pub fn install(&self) -> Result<(), JailError> {
        set(libc::RLIMIT_NOFILE, "no-file", self.no_file)?;
        if let Some(fsize) = self.fsize {
            set(libc::RLIMIT_FSIZE, "fsize", fsize)?;
        }
        Ok(())
    }
}

fn set(
    resource: libc::__rlimit_resource_t,
    name: &'static str,
    value: u64,
) -> Result<(), JailError> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit only reads the rlimit struct it is given, which lives on the stack.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(JailError::Rlimit {
            resource: name,
            value,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_no_limits_given_bounds_no_file_at_2048() {
        let limits = Limits::parse(&[]).unwrap();
        assert_eq!(
            limits,
            Limits {
                fsize: None,
                no_file: 2048
            }
        );
    }

    #[test]
    fn test_both_limits_parse() {
        let args = ["fsize=1000000".to_owned(), "no-file=64".to_owned()];
        let limits = Limits::parse(&args).unwrap();
        assert_eq!(
            limits,
            Limits {
                fsize: Some(1_000_000),
                no_file: 64
            }
        );
    }

    #[test]
    fn test_unknown_resource_or_bad_number_is_refused() {
        assert!(Limits::parse(&["nproc=10".to_owned()]).is_err());
        assert!(Limits::parse(&["fsize=-1".to_owned()]).is_err());
        assert!(Limits::parse(&["fsize".to_owned()]).is_err());
    }
}
