//! Run identifiers: UUIDv7 chosen by the publisher, written as strings on the wire.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// A run's id. UUIDv7, so ids sort by creation time. Serialised as its hyphenated string
/// (not 16 raw bytes) so every language's MessagePack library reads it the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId(Uuid);

impl RunId {
    /// A fresh, time-ordered run id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// Whether this is a UUIDv7, as every run id Sluice makes: time-ordered, so listings
    /// sort by it and the end of one tells runs apart. Ids of other versions are refused
    /// where they come in (a submission, a `RUN` argument).
    pub fn is_v7(&self) -> bool {
        self.0.get_version_num() == 7
    }

    /// Why this id is not a run id, if it is not a UUIDv7.
    pub fn check_v7(&self) -> Result<(), String> {
        if self.is_v7() {
            return Ok(());
        }
        Err(format!(
            "`{self}` is a UUID of version {}, not a run id: run ids are UUIDv7 (they begin with their creation time)",
            self.0.get_version_num()
        ))
    }
}

impl Default for RunId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for RunId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The text was not a UUID.
#[derive(Debug, thiserror::Error)]
#[error("invalid run id `{text}`: expected a UUID such as 0190f5c2-7d3a-7b4e-8a1f-2c3d4e5f6a7b")]
pub struct RunIdError {
    pub text: String,
}

impl FromStr for RunId {
    type Err = RunIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(text.trim()).map(Self).map_err(|_| RunIdError { text: text.chars().take(80).collect() })
    }
}

/// Both ids are written as their hyphenated string (not 16 raw bytes), so every language's
/// MessagePack library reads them the same way.
macro_rules! uuid_string_serde {
    ($type:ty) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0.hyphenated())
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
uuid_string_serde!(RunId);
uuid_string_serde!(RequestId);

/// A control request's id: UUIDv7 chosen by the client, the key of its answer in KV
/// `sluice-outcomes`. Written as a string on the wire, like [`RunId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(Uuid);

impl RequestId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for RequestId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for RequestId {
    type Err = RunIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse::<RunId>().map(|id| Self(id.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_uuid_v7_ids_are_run_ids() {
        let v7: RunId = "0190f5c2-7d3a-7b4e-8a1f-2c3d4e5f6a7b".parse().unwrap();
        assert!(v7.is_v7() && v7.check_v7().is_ok() && RunId::new().is_v7());
        let v4: RunId = "9b2e4c1a-3f5d-4e6a-8b7c-1d2e3f4a5b6c".parse().unwrap();
        let error = v4.check_v7().unwrap_err();
        assert!(error.contains("`9b2e4c1a-3f5d-4e6a-8b7c-1d2e3f4a5b6c` is a UUID of version 4"), "{error}");
    }
}
