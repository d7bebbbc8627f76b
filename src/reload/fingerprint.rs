//! A cheap identity for a set of files: what `stat` (following symlinks) says
//! about each. Any write, replacement or symlink swap changes it.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Device, inode, size, mtime (s, ns), ctime (s, ns) of one file.
type FileStamp = (u64, u64, u64, i64, i64, i64, i64);

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fingerprint(Vec<Option<FileStamp>>);

impl Fingerprint {
    pub fn of(paths: &[PathBuf]) -> Self {
        Fingerprint(
            paths
                .iter()
                .map(|p| {
                    std::fs::metadata(p).ok().map(|m| {
                        (
                            m.dev(),
                            m.ino(),
                            m.size(),
                            m.mtime(),
                            m.mtime_nsec(),
                            m.ctime(),
                            m.ctime_nsec(),
                        )
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_writes_replacements_and_removal() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("keys.toml");
        let paths = [file.clone()];
        let missing = Fingerprint::of(&paths);
        std::fs::write(&file, "a").unwrap_or_else(|e| panic!("{e}"));
        let first = Fingerprint::of(&paths);
        assert_ne!(missing, first);
        let tmp = dir.path().join("tmp");
        std::fs::write(&tmp, "b").unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, &file).unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(first, Fingerprint::of(&paths));
        std::fs::remove_file(&file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(missing, Fingerprint::of(&paths));
    }
}
