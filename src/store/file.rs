//! `FileStore`: the embedded key store on disk, `keys.toml` with `keys.revoked`
//! beside it. Every change happens under an exclusive advisory lock, re-reads
//! the file, and replaces it atomically (temp file, fsync, rename, fsync of the
//! folder), so concurrent CLI runs lose nothing and a crash leaves either the
//! old file or the new one.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use super::StoreError;
use crate::keys::storefile;
use crate::keys::{KeyHash, KeyRecord, KeySet, StoreSnapshot};

/// The key store file and its companions.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `keys.revoked` beside the store (same stem).
    pub fn revoked_path(&self) -> PathBuf {
        self.path.with_extension("revoked")
    }

    fn lock_path(&self) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path.with_file_name(format!(".{name}.lock"))
    }

    /// Reads and validates the store and the revocation list. A missing store
    /// is an error (the gateway must not start on nothing by accident); a
    /// missing revocation list is empty.
    pub fn load(&self) -> Result<StoreSnapshot, StoreError> {
        let text = read_text(&self.path)?;
        self.load_from(&text)
    }

    /// Like `load`, from store text already read (the reloader reads once to
    /// both hash and parse).
    pub fn load_from(&self, text: &str) -> Result<StoreSnapshot, StoreError> {
        let keys = storefile::parse_store(text).map_err(|error| StoreError::Invalid {
            path: self.path.clone(),
            error,
        })?;
        let revoked = self.load_revocations()?;
        Ok(StoreSnapshot::with_revocations(
            keys,
            revoked,
            SystemTime::now(),
        ))
    }

    /// The revocation list: each hash and when it is refused from (`None`:
    /// always). A missing list is empty.
    pub fn load_revocations(&self) -> Result<Vec<(KeyHash, Option<SystemTime>)>, StoreError> {
        let path = self.revoked_path();
        match read_text(&path) {
            Ok(text) => {
                storefile::parse_revoked(&text).map_err(|error| StoreError::Invalid { path, error })
            }
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Every hash on the revocation list, whenever it takes effect.
    pub fn load_revoked(&self) -> Result<HashSet<KeyHash>, StoreError> {
        Ok(self
            .load_revocations()?
            .into_iter()
            .map(|(h, _)| h)
            .collect())
    }

    /// Applies `change` to the current keys under the lock and writes the
    /// result. `change` sees every hash on the revocation list, in force
    /// now or later (none may be stored again). A missing store counts as
    /// empty here, so the first `create` makes the file. Nothing is written
    /// if `change` fails.
    pub fn modify<T>(
        &self,
        change: impl FnOnce(&mut KeySet, &HashSet<KeyHash>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let _lock = self.lock()?;
        let (mut keys, old) = match read_text(&self.path) {
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                (KeySet::default(), None)
            }
            text => {
                let text = text?;
                let keys = storefile::parse_store(&text).map_err(|error| StoreError::Invalid {
                    path: self.path.clone(),
                    error,
                })?;
                (keys, Some(text))
            }
        };
        let revoked = self.load_revoked()?;
        let out = change(&mut keys, &revoked)?;
        // Edited in place, keeping what was written by hand; whole if that
        // cannot be done faithfully.
        match old.and_then(|old| storefile::edit::over(&old, &keys)) {
            Some(text) => write_atomic(&self.path, &text)?,
            None => self.write(&keys)?,
        }
        Ok(out)
    }

    /// Gives key `id` the secret whose hash is `new_hash` (see
    /// `KeySet::rotate`). The hashes it stops accepting go on the revocation
    /// list first, each from its time, then the store is rewritten: a crash
    /// between the two leaves the old secrets revoked, the safe side.
    pub fn rotate(
        &self,
        id: &str,
        new_hash: KeyHash,
        until: Option<SystemTime>,
        now: SystemTime,
    ) -> Result<KeyRecord, StoreError> {
        self.modify(|keys, revoked| {
            if revoked.contains(&new_hash) {
                return Err(StoreError::Key(crate::keys::KeySetError::DuplicateHash {
                    existing_id: "a revoked key".into(),
                }));
            }
            let (record, revoke) = keys.rotate(id, new_hash, until, now)?;
            let lines: String = revoke
                .iter()
                .map(|(h, at)| storefile::revoked_line(h, &record.id, *at))
                .collect();
            self.append_revoked(&lines)?;
            Ok(record)
        })
    }

    /// Deletes a key: its hash is appended to the revocation list first, then
    /// the store is rewritten without it. A crash between the two leaves the
    /// key revoked, which is the safe side.
    pub fn delete(&self, id: &str) -> Result<KeyRecord, StoreError> {
        self.modify(|keys, _| {
            let removed = keys.remove(id)?;
            // A previous secret still in its grace goes with it, at once.
            let now = SystemTime::now();
            let lines: String = removed
                .hashes()
                .map(|h| storefile::revoked_line(&h, &removed.id, now))
                .collect();
            self.append_revoked(&lines)?;
            Ok(removed)
        })
    }

    /// `keys.usage` beside the store (same stem): what the gateway counted.
    pub fn usage_path(&self) -> PathBuf {
        self.path.with_extension("usage")
    }

    /// The persisted usage, by id; none if the gateway has written none.
    pub fn load_usage(&self) -> Result<Vec<(String, crate::keys::UsageSample)>, StoreError> {
        let path = self.usage_path();
        match read_text(&path) {
            Ok(text) => {
                storefile::parse_usage(&text).map_err(|error| StoreError::Invalid { path, error })
            }
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// Replaces `keys.usage` atomically (no lock: only the gateway writes it).
    pub fn write_usage(
        &self,
        samples: &[(String, crate::keys::UsageSample)],
    ) -> Result<(), StoreError> {
        write_atomic(&self.usage_path(), &storefile::render_usage(samples))
    }

    /// Appends `lines` (whole revocation list lines) and syncs the file.
    fn append_revoked(&self, lines: &str) -> Result<(), StoreError> {
        let path = self.revoked_path();
        let io_err = |source| StoreError::Io {
            path: path.clone(),
            action: "append to",
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        // A hand edit may have left no final newline: the entry must not be
        // glued onto the last line, or that revocation would be lost.
        let mut line = lines.to_string();
        if !ends_with_newline(&mut file).map_err(io_err)? {
            line.insert(0, '\n');
        }
        file.write_all(line.as_bytes()).map_err(io_err)?;
        file.sync_all().map_err(io_err)
    }

    fn lock(&self) -> Result<File, StoreError> {
        let path = self.lock_path();
        let io_err = |source| StoreError::Io {
            path: path.clone(),
            action: "lock",
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        file.lock().map_err(io_err)?;
        Ok(file)
    }

    /// Replaces the store and its revocation list with these (a gateway's
    /// snapshot of a database store), under the lock, each file atomically.
    pub fn replace(&self, keys: &KeySet, revoked: &HashSet<KeyHash>) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let mut lines: Vec<String> = revoked.iter().map(|h| h.to_hex()).collect();
        lines.sort_unstable();
        let text = format!(
            "# Revoked key hashes (BLAKE3), one per line: a gateway's snapshot.\n{}\n",
            lines.join("\n")
        );
        write_atomic(&self.revoked_path(), &text)?;
        self.write(keys)
    }

    /// Writes the whole store atomically with mode 0600.
    fn write(&self, keys: &KeySet) -> Result<(), StoreError> {
        let text = storefile::render_store(keys).map_err(|e| StoreError::Io {
            path: self.path.clone(),
            action: "render",
            source: io::Error::other(e),
        })?;
        write_atomic(&self.path, &text)
    }
}

/// True for an empty file or one whose last byte is a newline.
fn ends_with_newline(file: &mut File) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// Writes `text` to `path` atomically with mode 0600: a temp file in the same
/// folder, fsync, rename, fsync of the folder.
pub(super) fn write_atomic(path: &Path, text: &str) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per write, not only per process: two writers of one file in
    // one process (the usage writers, if ever not one after the other) must
    // not write into each other's temp file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{n}", std::process::id()));
    let io_err = |action, source| StoreError::Io {
        path: tmp.clone(),
        action,
        source,
    };
    let result = (|| {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io_err("create", e))?;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err("set the mode of", e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| io_err("write", e))?;
        file.sync_all().map_err(|e| io_err("sync", e))?;
        fs::rename(&tmp, path).map_err(|source| StoreError::Io {
            path: path.to_path_buf(),
            action: "replace",
            source,
        })?;
        // The rename is durable only once the folder's entry is on disk.
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| StoreError::Io {
                path: dir.clone(),
                action: "sync",
                source,
            })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a file as UTF-8 with an error that names it.
pub fn read_text(path: &Path) -> Result<String, StoreError> {
    let bytes = fs::read(path).map_err(|source| StoreError::Io {
        path: path.to_path_buf(),
        action: "read",
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| StoreError::Io {
        path: path.to_path_buf(),
        action: "read",
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Access, KeyId};

    fn record(id: &str) -> KeyRecord {
        KeyRecord {
            id: KeyId::parse(id).unwrap_or_else(|e| panic!("{e}")),
            name: id.into(),
            access: Access::ReadOnly,
            hash: KeyHash::of(id.as_bytes()),
            created: SystemTime::UNIX_EPOCH,
            expires: None,
            origins: vec![],
            previous: None,
            rate_limit: None,
        }
    }

    #[test]
    fn a_revocation_after_a_hand_edit_without_final_newline_is_its_own_line() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = FileStore::new(dir.path().join("keys.toml"));
        store
            .modify(|keys, _| Ok(keys.add(record("second"))?))
            .unwrap_or_else(|e| panic!("{e}"));
        // Revoked by hand, and saved without a final newline.
        let first = record("first");
        let by_hand = storefile::revoked_line(&first.hash, &first.id, SystemTime::UNIX_EPOCH);
        fs::write(store.revoked_path(), by_hand.trim_end()).unwrap_or_else(|e| panic!("{e}"));
        store.delete("second").unwrap_or_else(|e| panic!("{e}"));
        let revoked = store.load_revoked().unwrap_or_else(|e| panic!("{e}"));
        assert!(revoked.contains(&KeyHash::of(b"first")), "{revoked:?}");
        assert!(revoked.contains(&KeyHash::of(b"second")), "{revoked:?}");
    }

    #[test]
    fn two_writers_replacing_one_file_at_once_leave_one_whole_copy() {
        // The usage writer and the shutdown's last write do this: with one
        // temp name per process, one truncated the other's file mid-write
        // and the other's rename failed.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("keys.usage");
        let texts = ["a".repeat(256 * 1024), "b".repeat(200 * 1024)];
        std::thread::scope(|s| {
            for text in &texts {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..50 {
                        write_atomic(path, text).unwrap_or_else(|e| panic!("{e}"));
                    }
                });
            }
        });
        let left = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            texts.contains(&left),
            "a mixed file of {} bytes",
            left.len()
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap_or_else(|e| panic!("{e}"))
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, ["keys.usage"], "temp files left behind");
    }
}
