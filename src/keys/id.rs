//! `KeyId`: the public, stable name of a key, safe to log and to use as a metric label.

use std::fmt;

/// A key's public id: `[a-z0-9_]{1,32}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

const ID_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

impl KeyId {
    /// Validates an id read from a file or the command line.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 32 {
            return Err(format!("id {s:?} must be 1 to 32 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!("id {s:?} may hold only a-z, 0-9 and _"));
        }
        Ok(KeyId(s.to_string()))
    }

    /// A fresh random id, `key_` and 12 characters (about 62 bits): unique in
    /// practice, and checked against the store anyway before use.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut id = String::from("key_");
        let mut buf = [0u8; 32];
        while id.len() < 16 {
            getrandom::fill(&mut buf)?;
            for &b in &buf {
                // 252 = 7 × 36: rejection sampling keeps the draw uniform.
                if b < 252 && id.len() < 16 {
                    id.push(ID_ALPHABET[usize::from(b % 36)] as char);
                }
            }
        }
        Ok(KeyId(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_valid() {
        for _ in 0..100 {
            let id = KeyId::generate().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(KeyId::parse(id.as_str()), Ok(id.clone()));
            assert_eq!(id.as_str().len(), 16);
        }
    }

    #[test]
    fn invalid_ids_are_refused() {
        for bad in ["", "Key", "a-b", "é", &"a".repeat(33)] {
            assert!(KeyId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(KeyId::parse(&"a".repeat(32)).is_ok());
    }
}
