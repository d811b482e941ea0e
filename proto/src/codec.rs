//! MessagePack encoding with named fields (maps), so any language's client can read and
//! write Sluice messages; unknown fields are ignored, missing required ones are an error.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::messages::{SCHEMA_VERSION, Versioned};

/// A message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("cannot encode {what}: {source}")]
    Encode { what: &'static str, source: rmp_serde::encode::Error },
    #[error("not a valid {what} message: {source}")]
    Decode { what: &'static str, source: rmp_serde::decode::Error },
    #[error("{what} has schema_version {found}; this build reads versions up to {SCHEMA_VERSION}")]
    UnsupportedVersion { what: &'static str, found: u32 },
}

/// Encodes a message as a MessagePack map.
pub fn encode<T: Serialize + Versioned>(message: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(message).map_err(|source| CodecError::Encode { what: T::WHAT, source })
}

/// Decodes a message and checks that its schema version is one this build understands.
pub fn decode<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, CodecError> {
    let message: T = rmp_serde::from_slice(bytes).map_err(|source| CodecError::Decode { what: T::WHAT, source })?;
    let found = message.schema_version();
    if found == 0 || found > SCHEMA_VERSION {
        return Err(CodecError::UnsupportedVersion { what: T::WHAT, found });
    }
    Ok(message)
}
