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

/// Decodes a message and checks that its schema version is one this build understands. A
/// message of a newer schema is `UnsupportedVersion` even when its layout no longer fits
/// this build's type (a reader hands such a message on untouched instead of rejecting it).
pub fn decode<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, CodecError> {
    let message: T = rmp_serde::from_slice(bytes).map_err(|source| match schema_version_of(bytes) {
        Some(found) if found > SCHEMA_VERSION => CodecError::UnsupportedVersion { what: T::WHAT, found },
        _ => CodecError::Decode { what: T::WHAT, source },
    })?;
    let found = message.schema_version();
    if found == 0 || found > SCHEMA_VERSION {
        return Err(CodecError::UnsupportedVersion { what: T::WHAT, found });
    }
    Ok(message)
}

/// The `schema_version` field of a MessagePack map, if it has one (whatever else it holds).
fn schema_version_of(bytes: &[u8]) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Version {
        schema_version: u32,
    }
    rmp_serde::from_slice::<Version>(bytes).ok().map(|version| version.schema_version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::WorkerRecord;

    fn record(schema_version: u32) -> WorkerRecord {
        WorkerRecord {
            schema_version,
            worker_id: "w-1".into(),
            pool: "default".into(),
            kinds: vec!["exec".into()],
            protocol_versions: vec![SCHEMA_VERSION],
            version: "0.0.0".into(),
            slots: 4,
            busy: 0,
            started_at: chrono::DateTime::UNIX_EPOCH,
            leader: false,
        }
    }

    #[test]
    fn a_newer_schema_is_unsupported_whether_or_not_its_layout_fits() {
        let newer = SCHEMA_VERSION + 1;
        let fits = encode(&record(newer)).unwrap();
        let error = decode::<WorkerRecord>(&fits).unwrap_err();
        assert!(matches!(error, CodecError::UnsupportedVersion { found, .. } if found == newer), "{error}");
        // A newer layout this build cannot read: still a newer schema, not an invalid message.
        let relaid = rmp_serde::to_vec_named(&serde_json::json!({"schema_version": newer, "pool": 7})).unwrap();
        let error = decode::<WorkerRecord>(&relaid).unwrap_err();
        assert!(matches!(error, CodecError::UnsupportedVersion { found, .. } if found == newer), "{error}");
    }

    #[test]
    fn an_unreadable_message_of_this_schema_or_none_is_invalid() {
        let current =
            rmp_serde::to_vec_named(&serde_json::json!({"schema_version": SCHEMA_VERSION, "pool": 7})).unwrap();
        assert!(matches!(decode::<WorkerRecord>(&current), Err(CodecError::Decode { .. })));
        assert!(matches!(decode::<WorkerRecord>(b"\xc1 not msgpack"), Err(CodecError::Decode { .. })));
        assert_eq!(decode::<WorkerRecord>(&encode(&record(SCHEMA_VERSION)).unwrap()).unwrap(), record(SCHEMA_VERSION));
        assert!(matches!(
            decode::<WorkerRecord>(&encode(&record(0)).unwrap()),
            Err(CodecError::UnsupportedVersion { found: 0, .. })
        ));
    }
}
