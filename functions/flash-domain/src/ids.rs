//! Newtypes for every identifier and amount that crosses the API. Each is parsed once at the
//! edge; after that it cannot hold a value that would break a key or a condition expression.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Why a value from a request was refused; the message is shown to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValidationError(pub String);

fn invalid(msg: impl Into<String>) -> ValidationError {
    ValidationError(msg.into())
}

/// What every string identifier has: `as_str`, `Display`, and deserialization through its
/// `parse`, so a value read from JSON is checked as one read from a header.
macro_rules! parsed_string {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// A product code: 1–64 characters of `A-Z a-z 0-9 - _ .`. Anything else (notably `#`, our
/// key delimiter) is refused so a SKU can never forge another item's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Sku(String);

impl Sku {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(invalid(format!(
                "sku must be 1 to {} characters",
                Self::MAX_LEN
            )));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(invalid(
                "sku may contain only letters, digits, '-', '_' and '.'",
            ));
        }
        Ok(Self(s.to_owned()))
    }
}

parsed_string!(Sku);

/// Units in one order: never zero, at most [`Quantity::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Quantity(u32);

impl Quantity {
    /// One order may not take more than this; a flash sale is not a wholesale channel.
    pub const MAX: u32 = 1_000;

    pub fn new(n: u32) -> Result<Self, ValidationError> {
        if n == 0 || n > Self::MAX {
            return Err(invalid(format!(
                "quantity must be an integer from 1 to {}",
                Self::MAX
            )));
        }
        Ok(Self(n))
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Accept any JSON integer so that 0, -1 and 2^40 all get the same clear message.
        let n = i64::deserialize(d)
            .map_err(|_| serde::de::Error::custom("quantity must be an integer"))?;
        u32::try_from(n)
            .map_err(|_| {
                invalid(format!(
                    "quantity must be an integer from 1 to {}",
                    Quantity::MAX
                ))
            })
            .and_then(Quantity::new)
            .map_err(serde::de::Error::custom)
    }
}

/// The caller, as the authorizer's `sub` claim names them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
            return Err(invalid("the token's subject is not a valid user id"));
        }
        Ok(Self(s.to_owned()))
    }
}

parsed_string!(UserId);

/// The client's `Idempotency-Key` header: 1–128 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.is_empty() || s.len() > Self::MAX_LEN || !s.bytes().all(|b| (0x20..=0x7e).contains(&b))
        {
            return Err(invalid(format!(
                "Idempotency-Key must be 1 to {} printable ASCII characters",
                Self::MAX_LEN
            )));
        }
        Ok(Self(s.to_owned()))
    }
}

parsed_string!(IdempotencyKey);

/// 32 lowercase hex digits naming a caller's `Idempotency-Key`: the same caller and key always
/// give the same digest, and two callers' keys never collide.
pub fn key_digest(user: &UserId, key: &IdempotencyKey) -> String {
    let mut h = Sha256::new();
    // Length-prefix the user so ("ab","c") and ("a","bc") cannot produce the same input.
    h.update((user.as_str().len() as u64).to_be_bytes());
    h.update(user.as_str());
    h.update(key.as_str());
    hex::encode(&h.finalize()[..16])
}

/// An order's id: 32 lowercase hex digits. Derived from caller and idempotency key, so the
/// same request always lands on the same item, and two callers' keys never collide.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct OrderId(String);

impl OrderId {
    pub fn derive(user: &UserId, key: &IdempotencyKey) -> Self {
        Self(key_digest(user, key))
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Self(s.to_owned()))
        } else {
            Err(invalid("order id must be 32 lowercase hex digits"))
        }
    }
}

parsed_string!(OrderId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_refuses_key_delimiters_and_bad_lengths() {
        assert!(Sku::parse("PHONE-1").is_ok());
        for bad in ["", "A#B", "a b", "é", &"x".repeat(65)] {
            assert!(Sku::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn quantity_is_never_zero_and_bounded() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(Quantity::MAX + 1).is_err());
        assert_eq!(Quantity::new(3).unwrap().get(), 3);
        for bad in ["0", "-1", "1.5", "\"2\"", "1e9", "4294967296", "null"] {
            assert!(
                serde_json::from_str::<Quantity>(bad).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn idempotency_key_is_printable_ascii_up_to_128() {
        assert!(IdempotencyKey::parse(&"k".repeat(128)).is_ok());
        for bad in [String::new(), "k".repeat(129), "clé".into(), "a\nb".into()] {
            assert!(IdempotencyKey::parse(&bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn order_ids_are_scoped_to_the_caller() {
        let key = IdempotencyKey::parse("same-key").unwrap();
        let a = OrderId::derive(&UserId::parse("alice").unwrap(), &key);
        let b = OrderId::derive(&UserId::parse("bob").unwrap(), &key);
        assert_ne!(a, b);
        assert_eq!(a, OrderId::derive(&UserId::parse("alice").unwrap(), &key));
        assert!(OrderId::parse(a.as_str()).is_ok());
        let ab = OrderId::derive(
            &UserId::parse("ab").unwrap(),
            &IdempotencyKey::parse("c").unwrap(),
        );
        let a_bc = OrderId::derive(
            &UserId::parse("a").unwrap(),
            &IdempotencyKey::parse("bc").unwrap(),
        );
        assert_ne!(ab, a_bc);
    }
}
