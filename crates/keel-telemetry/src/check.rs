//! Checks for [`crate::Program::validate`] and [`crate::Program::check`]:
//! each returns a [`ConfigError`] naming the variable, and none has a side
//! effect (nothing is created, written, bound or sent).

use std::path::Path;

use keel_core::ConfigError;
use url::Url;

/// `value` parsed as an `http` or `https` URL with a host; a trailing `/` is
/// kept as given (join paths with care).
///
/// # Errors
/// A [`ConfigError`] naming `variable` when it does not parse, has another
/// scheme, or has no host.
pub fn http_url(variable: &'static str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value.trim())
        .map_err(|e| ConfigError::new(variable, format!("`{value}` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(
            variable,
            format!("`{value}` must be an http or https URL with a host"),
        ));
    }
    Ok(url)
}

/// `path` is a regular file this process can open for reading (opened and
/// closed again, nothing read).
///
/// # Errors
/// A [`ConfigError`] naming `variable` when it is missing, a directory, or
/// cannot be opened.
pub fn readable_file(variable: &'static str, path: &Path) -> Result<(), ConfigError> {
    let shown = path.display();
    let metadata = std::fs::metadata(path)
        .map_err(|e| ConfigError::new(variable, format!("`{shown}`: {e}")))?;
    if !metadata.is_file() {
        return Err(ConfigError::new(
            variable,
            format!("`{shown}` is not a regular file"),
        ));
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| ConfigError::new(variable, format!("`{shown}` cannot be read: {e}")))
}

/// The program will be able to create or replace `path`: its parent
/// directory exists and is writable, and `path`, if it exists, is a
/// writable regular file. Checked with `access(2)`, so nothing is created;
/// as `access(2)` does, it answers for the real user id and trusts root.
///
/// # Errors
/// A [`ConfigError`] naming `variable` saying which of these fails.
pub fn writable_path(variable: &'static str, path: &Path) -> Result<(), ConfigError> {
    let shown = path.display();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent_shown = parent.display();
    let metadata = std::fs::metadata(parent).map_err(|e| {
        ConfigError::new(
            variable,
            format!("directory `{parent_shown}` of `{shown}`: {e}"),
        )
    })?;
    if !metadata.is_dir() {
        return Err(ConfigError::new(
            variable,
            format!("`{parent_shown}` (parent of `{shown}`) is not a directory"),
        ));
    }
    writable(parent).map_err(|e| {
        ConfigError::new(
            variable,
            format!("directory `{parent_shown}` is not writable: {e}"),
        )
    })?;
    match std::fs::symlink_metadata(path) {
        Ok(existing) if existing.is_dir() => Err(ConfigError::new(
            variable,
            format!("`{shown}` is a directory"),
        )),
        Ok(_) => writable(path)
            .map_err(|e| ConfigError::new(variable, format!("`{shown}` is not writable: {e}"))),
        Err(_) => Ok(()),
    }
}

#[cfg(unix)]
fn writable(path: &Path) -> Result<(), std::io::Error> {
    use nix::unistd::{AccessFlags, access};
    access(path, AccessFlags::W_OK).map_err(std::io::Error::from)
}

#[cfg(not(unix))]
fn writable(path: &Path) -> Result<(), std::io::Error> {
    let metadata = std::fs::metadata(path)?;
    if metadata.permissions().readonly() {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "read-only",
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls() {
        assert_eq!(
            http_url("UPSTREAM_URL", " https://api.example.com/v1 ")
                .unwrap()
                .as_str(),
            "https://api.example.com/v1"
        );
        for bad in ["", "not a url", "ftp://x", "http://", "unix:/tmp/s"] {
            let err = http_url("UPSTREAM_URL", bad).unwrap_err();
            assert_eq!(err.field(), "UPSTREAM_URL", "{bad}");
        }
    }

    #[test]
    fn readable_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vms.yaml");
        std::fs::write(&file, "vms: []\n").unwrap();
        readable_file("VMS_CONFIG", &file).unwrap();
        let missing = readable_file("VMS_CONFIG", &dir.path().join("nope")).unwrap_err();
        assert_eq!(missing.field(), "VMS_CONFIG");
        assert!(missing.reason().contains("nope"), "{missing}");
        let directory = readable_file("VMS_CONFIG", dir.path()).unwrap_err();
        assert!(
            directory.reason().contains("not a regular file"),
            "{directory}"
        );
    }

    #[test]
    fn writable_paths() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool.json");
        writable_path("ALERT_SPOOL", &spool).unwrap();
        assert!(!spool.exists(), "the check creates nothing");
        std::fs::write(&spool, "[]").unwrap();
        writable_path("ALERT_SPOOL", &spool).unwrap();

        let err = writable_path("ALERT_SPOOL", &dir.path().join("no/such/dir/spool")).unwrap_err();
        assert_eq!(err.field(), "ALERT_SPOOL");
        assert!(err.reason().contains("no/such/dir"), "{err}");
        let err = writable_path("ALERT_SPOOL", &spool.join("under-a-file")).unwrap_err();
        assert!(err.reason().contains("not a directory"), "{err}");
        let err = writable_path("ALERT_SPOOL", dir.path()).unwrap_err();
        assert!(err.reason().contains("is a directory"), "{err}");
        // A bare file name is checked against the working directory.
        writable_path("ALERT_SPOOL", Path::new("spool.json")).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn read_only_directories_are_refused_unless_root() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        if std::fs::File::create(locked.join("probe")).is_ok() {
            eprintln!("SKIPPED: this user (root?) may write anywhere, so access(2) says yes");
            return;
        }
        let err = writable_path("ALERT_SPOOL", &locked.join("spool")).unwrap_err();
        assert!(err.reason().contains("not writable"), "{err}");
    }
}
