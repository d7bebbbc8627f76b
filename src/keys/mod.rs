//! The key model: tokens, their hashes, key records, the validated key set,
//! the store file format (text in, text out) and the in-memory index that
//! requests read. Pure: no file, socket, clock or runtime here; the stores
//! that read and write these live in `crate::store`.

mod hash;
mod id;
pub mod import;
mod index;
pub mod json;
mod keyset;
pub mod rate;
pub mod record;
pub mod snippet;
pub mod storefile;
pub mod token;
pub mod tokens;
mod usage;

pub use hash::{IdHasher, KeyHash};
pub use id::KeyId;
pub use index::{IndexDelta, KeyEntry, KeyIndex, Lookup, Rare, SharedIndex};
pub use keyset::{KeySet, KeySetError, KeyUpdate, StoreSnapshot};
pub use rate::{RateCell, RateLimit};
pub use record::{Access, KeyRecord};
pub use usage::{KeyUsage, UsageFingerprint, UsageSample, UsageTable};
