//! Key tokens: `<prefix>_<random><checksum>`.
//!
//! The random part is 30 base62 characters from the OS CSPRNG (about 178 bits);
//! the checksum is the CRC32 of everything before it, written as 6 base62
//! characters. The checksum lets the gateway reject a mistyped or truncated key
//! before any lookup, and gives secret scanners a format with few false positives.
//! Tokens that do not carry the configured prefix (keys imported from another
//! gateway) are opaque: they are only hashed and looked up.

use std::fmt;

/// Base62 alphabet, in the order used for the checksum encoding.
const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Characters of randomness in a generated token: 30 × log2(62) ≈ 178.6 bits.
pub const RANDOM_LEN: usize = 30;
/// Characters of checksum: 62^6 > 2^32, so any CRC32 fits.
pub const CHECKSUM_LEN: usize = 6;
/// Longest token accepted at all; anything longer is malformed, whatever its form.
pub const MAX_TOKEN_LEN: usize = 512;

/// Why a presented token was refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Empty, too long, or holding bytes that are not visible ASCII.
    Malformed,
    /// Carries our prefix but not the right length or alphabet after it.
    BadFormat,
    /// Carries our prefix and the right shape, but the checksum does not match.
    BadChecksum,
}

impl TokenError {
    /// A client-safe description: it depends only on the token's shape.
    pub const fn message(self) -> &'static str {
        match self {
            TokenError::Malformed => "the API key is empty, too long or holds invalid characters",
            TokenError::BadFormat => "the API key does not have the expected format",
            TokenError::BadChecksum => {
                "the API key's checksum does not match: it was mistyped or truncated"
            }
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// Checks that `prefix` can start a token: 1 to 16 ASCII letters or digits.
pub fn validate_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.len() > 16 || !prefix.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(format!(
            "prefix {prefix:?} must be 1 to 16 ASCII letters or digits"
        ));
    }
    if prefix == super::tokens::TOKEN_PREFIX {
        return Err(format!(
            "prefix {prefix:?} is the admin tokens' prefix: API keys must never look like admin tokens"
        ));
    }
    Ok(())
}

/// Generates a new token with `prefix` from the OS CSPRNG.
pub fn generate(prefix: &str) -> Result<String, getrandom::Error> {
    let mut token = String::with_capacity(prefix.len() + 1 + RANDOM_LEN + CHECKSUM_LEN);
    token.push_str(prefix);
    token.push('_');
    let mut filled = 0;
    let mut buf = [0u8; 64];
    while filled < RANDOM_LEN {
        getrandom::fill(&mut buf)?;
        for &b in &buf {
            // Rejection sampling: 248 = 4 × 62, so bytes below it map uniformly.
            if b < 248 && filled < RANDOM_LEN {
                token.push(ALPHABET[usize::from(b % 62)] as char);
                filled += 1;
            }
        }
    }
    let checksum = encode_checksum(crc32fast::hash(token.as_bytes()));
    token.push_str(&checksum);
    Ok(token)
}

fn encode_checksum(mut value: u32) -> String {
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    out.iter().map(|&b| b as char).collect()
}

fn decode_checksum(s: &[u8]) -> Option<u64> {
    s.iter().try_fold(0u64, |acc, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'Z' => b - b'A' + 10,
            b'a'..=b'z' => b - b'a' + 36,
            _ => return None,
        };
        Some(acc * 62 + u64::from(digit))
    })
}

/// Checks a presented token's form. It does not look anything up: a token that
/// passes may still be unknown.
///
/// A token with `<prefix>_` must have exactly our format and checksum; any
/// other visible-ASCII token is accepted as opaque (an imported key).
pub fn check(token: &[u8], prefix: &str) -> Result<(), TokenError> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let graphic = |t: &[u8]| t.iter().all(u8::is_ascii_graphic);
    let rest = token
        .strip_prefix(prefix.as_bytes())
        .and_then(|r| r.strip_prefix(b"_"));
    let Some(rest) = rest else {
        return if graphic(token) {
            Ok(())
        } else {
            Err(TokenError::Malformed)
        };
    };
    // Fast path, one pass: the right length and all alphanumeric (which the
    // prefix is too, by `validate_prefix`) means visible ASCII as well.
    if rest.len() != RANDOM_LEN + CHECKSUM_LEN || !rest.iter().all(u8::is_ascii_alphanumeric) {
        return Err(if graphic(rest) {
            TokenError::BadFormat
        } else {
            TokenError::Malformed
        });
    }
    let body_len = token.len() - CHECKSUM_LEN;
    let expected = u64::from(crc32fast::hash(&token[..body_len]));
    match decode_checksum(&token[body_len..]) {
        Some(found) if found == expected => Ok(()),
        _ => Err(TokenError::BadChecksum),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fresh() -> String {
        generate("kg").unwrap_or_else(|e| panic!("CSPRNG failed: {e}"))
    }

    #[test]
    fn generated_token_has_the_documented_shape() {
        let t = fresh();
        assert!(t.starts_with("kg_"));
        assert_eq!(t.len(), 3 + RANDOM_LEN + CHECKSUM_LEN);
        assert!(t[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(check(t.as_bytes(), "kg"), Ok(()));
    }

    #[test]
    fn two_generated_tokens_differ() {
        assert_ne!(fresh(), fresh());
    }

    #[test]
    fn truncated_or_extended_prefixed_token_is_bad_format() {
        let t = fresh();
        assert_eq!(
            check(&t.as_bytes()[..t.len() - 1], "kg"),
            Err(TokenError::BadFormat)
        );
        assert_eq!(
            check(format!("{t}A").as_bytes(), "kg"),
            Err(TokenError::BadFormat)
        );
        assert_eq!(check(b"kg_", "kg"), Err(TokenError::BadFormat));
    }

    #[test]
    fn non_prefixed_tokens_are_opaque() {
        assert_eq!(check(b"legacy-secret-123", "kg"), Ok(()));
        // Another gateway's prefix is opaque too: case matters.
        assert_eq!(check(b"KG_abc", "kg"), Ok(()));
    }

    #[test]
    fn empty_spaced_control_or_huge_tokens_are_malformed() {
        assert_eq!(check(b"", "kg"), Err(TokenError::Malformed));
        assert_eq!(check(b"a b", "kg"), Err(TokenError::Malformed));
        assert_eq!(check(b"ab\x01", "kg"), Err(TokenError::Malformed));
        assert_eq!(
            check("cl\u{e9}".as_bytes(), "kg"),
            Err(TokenError::Malformed)
        );
        assert_eq!(
            check(&[b'a'; MAX_TOKEN_LEN + 1], "kg"),
            Err(TokenError::Malformed)
        );
        assert_eq!(check(&[b'a'; MAX_TOKEN_LEN], "kg"), Ok(()));
    }

    #[test]
    fn checksum_encoding_round_trips_extremes() {
        for v in [0u32, 1, 61, 62, u32::MAX] {
            assert_eq!(
                decode_checksum(encode_checksum(v).as_bytes()),
                Some(u64::from(v))
            );
        }
    }

    #[test]
    fn prefix_validation() {
        assert!(validate_prefix("kg").is_ok());
        assert!(validate_prefix("Acme2").is_ok());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("a_b").is_err());
        assert!(validate_prefix(&"a".repeat(17)).is_err());
    }

    proptest! {
        #[test]
        fn every_generated_token_passes(prefix in "[a-zA-Z0-9]{1,16}") {
            let t = generate(&prefix).unwrap_or_else(|e| panic!("CSPRNG failed: {e}"));
            prop_assert_eq!(check(t.as_bytes(), &prefix), Ok(()));
        }

        #[test]
        fn any_single_character_change_after_the_prefix_is_refused(
            pos in 3usize..(3 + RANDOM_LEN + CHECKSUM_LEN),
            replacement in proptest::sample::select(ALPHABET.to_vec()),
        ) {
            let t = fresh();
            let mut bytes = t.clone().into_bytes();
            prop_assume!(bytes[pos] != replacement);
            bytes[pos] = replacement;
            prop_assert_eq!(check(&bytes, "kg"), Err(TokenError::BadChecksum));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = check(&bytes, "kg");
        }

        #[test]
        fn arbitrary_prefixed_tails_never_panic(tail in "[ -~]{0,60}") {
            let _ = check(format!("kg_{tail}").as_bytes(), "kg");
        }
    }
}
