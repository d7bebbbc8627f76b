//! The key model: tokens, their hashes, key records, the validated key set, the
//! store files and the in-memory index. Pure except `store`, which owns the
//! file I/O (locking, atomic writes, the revocation list).

mod hash;
mod id;
pub mod import;
mod index;
mod keyset;
pub mod postgres;
pub mod record;
pub mod store;
pub mod storefile;
pub mod token;

pub use hash::KeyHash;
pub use id::KeyId;
pub use index::{IndexDelta, KeyEntry, KeyIndex, Lookup};
pub use keyset::{KeySet, KeySetError, KeyUpdate};
pub use postgres::PgStore;
pub use record::{Access, KeyRecord};
pub use store::{FileStore, Store, StoreError, StoreSnapshot};
