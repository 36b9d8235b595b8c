//! A private temporary directory (mode 0700) for keys, configurations and
//! logs, removed with everything in it on drop.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::names::next_id;
use crate::{Error, Result};

/// `cwt-<prefix>-<pid>-<n>` in the temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Result<TempDir> {
        let path =
            std::env::temp_dir().join(format!("cwt-{prefix}-{}-{}", std::process::id(), next_id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a new file with mode 0600 (for keys and configs).
    pub fn write(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.path.join(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io("create", &path, e))?;
        f.write_all(contents.as_bytes())
            .map_err(|e| Error::io("write", &path, e))?;
        Ok(path)
    }

    /// A fresh file name in the directory, `<stem>-<n>.<ext>` (not created).
    pub fn file(&self, stem: &str, ext: &str) -> PathBuf {
        self.path.join(format!("{stem}-{}.{ext}", next_id()))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_and_removed() {
        let dir = TempDir::new("unit").expect("temp dir");
        let key = dir.write("key", "secret\n").expect("written");
        let mode = fs::metadata(&key).expect("exists").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(dir.write("key", "again").is_err(), "never overwrites");
        assert_ne!(dir.file("a", "log"), dir.file("a", "log"));
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
    }
}
