//! `KeyHash`: the BLAKE3 digest of a token, the only form in which a key is stored.

use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// BLAKE3 digest of a token. Its `Debug` and `Display` show only a short
/// fingerprint, so a hash never lands whole in a log line by accident.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes a presented token.
    pub fn of(token: &[u8]) -> Self {
        KeyHash(*blake3::hash(token).as_bytes())
    }

    /// Parses the 64-character lowercase hex form used in the store files.
    pub fn from_hex(s: &str) -> Result<Self, String> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(format!(
                "must be 64 hex characters (a BLAKE3 digest), found {}",
                bytes.len()
            ));
        }
        // A table lookup a digit, the check once at the end: a store of a
        // million keys reads 64 million of them.
        let mut out = [0u8; 32];
        let mut bad = 0u8;
        for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            let (hi, lo) = (HEX[usize::from(pair[0])], HEX[usize::from(pair[1])]);
            bad |= hi | lo;
            *o = (hi << 4) | (lo & 0x0f);
        }
        if bad & 0xf0 != 0 {
            return Err("must be lowercase hex (0-9, a-f)".to_string());
        }
        Ok(KeyHash(out))
    }

    /// The raw digest, for the database store's `bytea` columns.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A digest read back from the database store.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, String> {
        <[u8; 32]>::try_from(bytes)
            .map(KeyHash)
            .map_err(|_| format!("must be 32 bytes (a BLAKE3 digest), found {}", bytes.len()))
    }

    /// The full 64-character hex form, for the store files only.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 15)] as char);
        }
        s
    }

    /// The first 8 hex characters: enough to tell hashes apart in a message.
    pub fn fingerprint(&self) -> String {
        self.to_hex()[..8].to_string()
    }
}

/// A lowercase hex digit's value, and 0xff for any other byte.
const HEX: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", self.fingerprint())
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", self.fingerprint())
    }
}

/// Hasher for maps keyed by `KeyHash`. The digest is already uniformly random,
/// so its first 8 bytes are as good a hash as SipHash would compute, for free.
#[derive(Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]`'s Hash writes the 32 bytes in one call (plus nothing else).
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }
}

/// `BuildHasher` for `HashMap<KeyHash, _>`.
pub type DigestState = BuildHasherDefault<DigestHasher>;

/// Hasher for the sets a load builds by key id (1 to 32 bytes of
/// `[a-z0-9_]`) and for the reload's change count. A million-key load
/// hashed a key's id four times and its digest twice with SipHash, about a
/// tenth of the load's time (PERFORMANCE.md, session 12). The ids these
/// sets hold come from the store, never from a request, and whoever can
/// write the store decides every key already, so SipHash's resistance to
/// chosen collisions buys nothing there. A multiply-and-rotate over 8-byte
/// words, folded at the end so that the low bits (the bucket) depend on
/// every byte, costs a fraction of it.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl IdHasher {
    /// FxHash's multiplier (rustc's own hasher).
    const K: u64 = 0xf135_7aea_2e62_a9c5;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // A 128-bit product folded: high input bits reach the low output bits.
        let full = u128::from(self.0) * u128::from(0x9e37_79b9_7f4a_7c15_u64);
        (full as u64) ^ ((full >> 64) as u64)
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.add(u64::from_le_bytes(b));
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            let mut b = [0u8; 8];
            b[..tail.len()].copy_from_slice(tail);
            // The length tells "ab" from "ab\0".
            self.add(u64::from_le_bytes(b) ^ ((tail.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
}

/// `BuildHasher` for sets and maps keyed by key id.
pub type IdState = BuildHasherDefault<IdHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    fn id_hash(id: &str) -> u64 {
        use std::hash::BuildHasher;
        IdState::default().hash_one(id)
    }

    #[test]
    fn id_hashes_tell_ids_apart() {
        // Ids of every length, and ids one byte apart at every place.
        let mut seen = std::collections::HashSet::new();
        let base = "abcdefghijklmnopqrstuvwxyz012345";
        for len in 1..=base.len() {
            assert!(seen.insert(id_hash(&base[..len])), "length {len}");
            for at in 0..len {
                let mut other = base.as_bytes()[..len].to_vec();
                other[at] = b'_';
                let other = String::from_utf8(other).unwrap_or_else(|e| panic!("{e}"));
                assert_ne!(id_hash(&other), id_hash(&base[..len]), "{other}");
            }
        }
    }

    #[test]
    fn id_hashes_spread_over_buckets() {
        // Ids as `keys create` makes them, and sequential ones as an import
        // might: a table's bucket is the hash's low bits, so they must spread
        // (a bad mix puts whole runs in a few buckets).
        for ids in [
            (0..65_536)
                .map(|i| format!("key_{i:012x}"))
                .collect::<Vec<_>>(),
            (0..65_536).map(|i| format!("k{i}")).collect(),
            (0..65_536)
                .map(|i| format!("user_{}_key", i * 4096))
                .collect(),
        ] {
            let mut buckets = vec![0u32; 1 << 16];
            for id in &ids {
                buckets[(id_hash(id) & 0xffff) as usize] += 1;
            }
            // Uniform hashing puts at most about 9 in a bucket here.
            let worst = buckets.iter().max().copied().unwrap_or(0);
            assert!(worst <= 12, "{} ids in one bucket ({})", worst, ids[0]);
        }
    }

    #[test]
    fn hex_round_trips() {
        let h = KeyHash::of(b"kg_secret");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Ok(h));
    }

    #[test]
    fn hex_errors_are_precise() {
        assert!(KeyHash::from_hex("abc").unwrap_err().contains("64 hex"));
        let upper = "A".repeat(64);
        assert!(KeyHash::from_hex(&upper).unwrap_err().contains("lowercase"));
    }

    #[test]
    fn debug_and_display_never_show_the_whole_digest() {
        let h = KeyHash::of(b"x");
        assert!(!format!("{h:?}").contains(&h.to_hex()));
        assert!(!format!("{h}").contains(&h.to_hex()));
    }

    #[test]
    fn hash_matches_blake3() {
        assert_eq!(
            KeyHash::of(b"abc").to_hex(),
            blake3::hash(b"abc").to_hex().to_string()
        );
    }
}
