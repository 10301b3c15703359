//! The identity of the SQLite database file, for the health probe.
//!
//! Guarantee: checking never opens the database file. Closing *any* file
//! descriptor of the database file drops every POSIX lock this process holds
//! on it, after which another process may checkpoint and delete the WAL under
//! our live connections ("How To Corrupt An SQLite Database File", section
//! 2.2). That happened: a header read in the health check made the daemon see
//! "database disk image is malformed" while CLI processes wrote to the same
//! file. So the check is a `stat` (gone? replaced by another inode?), and the
//! one descriptor kept to pin the inode is opened once and never closed.

use std::path::{Path, PathBuf};
use std::sync::Once;

use super::unavailable;
use crate::store::StoreError;

/// (device, inode) of a file.
type Identity = (u64, u64);

/// The database file as the store opened it.
#[derive(Debug)]
pub struct DbFile {
    path: PathBuf,
    identity: Option<Identity>,
    pinned: Once,
}

impl DbFile {
    /// Records the identity of `path` now (a stat).
    pub fn new(path: &Path) -> DbFile {
        DbFile { path: path.to_path_buf(), identity: file_identity(path), pinned: Once::new() }
    }

    /// The file at `path` must still be the one the store opened: a deleted
    /// or replaced file means new commits go to a file nobody will read
    /// again. The first check pins the inode (see [`hold_open`]).
    pub fn check(&self) -> Result<(), StoreError> {
        self.pinned.call_once(|| hold_open(&self.path));
        check_file(&self.path, self.identity).map_err(unavailable)
    }
}

/// Keeps one descriptor of the database file open for the life of the
/// process, so its inode can't be freed and reused by a replacement file
/// (which would defeat the identity check). Never closed: see the module doc.
pub fn hold_open(path: &Path) {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    if let Ok(f) = std::fs::File::open(path) {
        if let Ok(mut held) = HELD.lock() {
            held.push(f);
        }
    }
}

#[cfg(unix)]
fn file_identity(path: &Path) -> Option<Identity> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_identity(_path: &Path) -> Option<Identity> {
    None
}

/// Only `stat`, never `open` (module doc).
fn check_file(path: &Path, identity: Option<Identity>) -> Result<(), String> {
    let now = file_identity(path);
    if now.is_none() && std::fs::metadata(path).is_err() {
        return Err(format!("database file {} is gone", path.display()));
    }
    if identity.is_some() && now != identity {
        return Err(format!("database file {} was replaced by another file", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_file_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.db");
        assert!(check_file(&p, None).unwrap_err().contains("gone"));
        std::fs::write(&p, b"SQLite format 3\0rest").unwrap();
        let f = DbFile::new(&p);
        f.check().unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(&p, b"garbage garbage garbage").unwrap();
        let e = f.check().unwrap_err().to_string();
        assert!(e.contains("replaced"), "{e}");
        std::fs::remove_file(&p).unwrap();
        let e = f.check().unwrap_err().to_string();
        assert!(e.contains("gone"), "{e}");
    }
}
