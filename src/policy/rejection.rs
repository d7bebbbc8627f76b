//! `Rejection`: a policy outcome that refuses a request (not an error), with
//! its status, wire code and message. The codes are also metric labels.

use http::StatusCode;

use crate::keys::token::TokenError;
use crate::metrics::DecisionLabel;

/// Why a key was invalid; only the token-format reasons reach the client's
/// message, so that a caller cannot tell a revoked key from an unknown one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    Token(TokenError),
    Unknown,
    Revoked,
    Multiple,
}

/// A refusal from rows 1 to 6 of the decision table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    MissingKey,
    InvalidKey(InvalidReason),
    ExpiredKey,
    BrowserFullAccess,
    OriginNotAllowed,
    ReadOnlyMethod,
}

impl Rejection {
    pub const fn status(self) -> StatusCode {
        match self {
            Rejection::MissingKey | Rejection::InvalidKey(_) | Rejection::ExpiredKey => {
                StatusCode::UNAUTHORIZED
            }
            Rejection::BrowserFullAccess
            | Rejection::OriginNotAllowed
            | Rejection::ReadOnlyMethod => StatusCode::FORBIDDEN,
        }
    }

    /// The `decision` metric label; its text is `code()`.
    pub const fn label(self) -> DecisionLabel {
        match self {
            Rejection::MissingKey => DecisionLabel::MissingKey,
            Rejection::InvalidKey(_) => DecisionLabel::InvalidKey,
            Rejection::ExpiredKey => DecisionLabel::ExpiredKey,
            Rejection::BrowserFullAccess => DecisionLabel::BrowserFullAccess,
            Rejection::OriginNotAllowed => DecisionLabel::OriginNotAllowed,
            Rejection::ReadOnlyMethod => DecisionLabel::ReadOnlyMethod,
        }
    }

    pub const fn code(self) -> &'static str {
        match self {
            Rejection::MissingKey => "missing_key",
            Rejection::InvalidKey(_) => "invalid_key",
            Rejection::ExpiredKey => "expired_key",
            Rejection::BrowserFullAccess => "browser_full_access",
            Rejection::OriginNotAllowed => "origin_not_allowed",
            Rejection::ReadOnlyMethod => "read_only_method",
        }
    }

    /// The client-facing message. Static text: never the key, never a hash.
    pub const fn message(self) -> &'static str {
        match self {
            Rejection::MissingKey => {
                "no API key: send it in the x-api-key header or as Authorization: Bearer <key>"
            }
            Rejection::InvalidKey(InvalidReason::Token(e)) => e.message(),
            Rejection::InvalidKey(InvalidReason::Unknown | InvalidReason::Revoked) => {
                "the API key is not valid"
            }
            Rejection::InvalidKey(InvalidReason::Multiple) => {
                "more than one API key in the request: send exactly one"
            }
            Rejection::ExpiredKey => "the API key has expired",
            Rejection::BrowserFullAccess => {
                "a full-access key must never be used from a browser: use a read-only key in frontends, and rotate this one"
            }
            Rejection::OriginNotAllowed => "this origin is not allowed for this API key",
            Rejection::ReadOnlyMethod => "a read-only key may only use GET, HEAD and OPTIONS",
        }
    }

    /// A short reason for logs (more precise than the client message).
    pub const fn detail(self) -> &'static str {
        match self {
            Rejection::InvalidKey(InvalidReason::Token(TokenError::Malformed)) => "malformed",
            Rejection::InvalidKey(InvalidReason::Token(TokenError::BadFormat)) => "bad_format",
            Rejection::InvalidKey(InvalidReason::Token(TokenError::BadChecksum)) => "bad_checksum",
            Rejection::InvalidKey(InvalidReason::Unknown) => "unknown",
            Rejection::InvalidKey(InvalidReason::Revoked) => "revoked",
            Rejection::InvalidKey(InvalidReason::Multiple) => "multiple",
            other => other.code(),
        }
    }
}
