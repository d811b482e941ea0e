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
    #[error("not a valid {what} message: {}{source}", field_prefix(.field))]
    Decode {
        what: &'static str,
        /// Where in the message the problem is (`submitted_at`, `window.start`), when known.
        field: Option<String>,
        source: rmp_serde::decode::Error,
    },
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
    // Plain decoding first: tracking the path of every field costs every message (a third
    // more CPU per job in the coordinator), and only a failure needs it.
    let message: T = match rmp_serde::from_slice(bytes) {
        Ok(message) => message,
        Err(_) => return Err(decode_error::<T>(bytes)),
    };
    let found = message.schema_version();
    if found == 0 || found > SCHEMA_VERSION {
        return Err(CodecError::UnsupportedVersion { what: T::WHAT, found });
    }
    Ok(message)
}

/// Why `bytes` are not a `T`: decoded again, tracking the path, so the error names the
/// field a bad value is in ("submitted_at: input contains invalid characters" says what to
/// fix, the bare parser message does not).
fn decode_error<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> CodecError {
    if let Some(found) = schema_version_of(bytes)
        && found > SCHEMA_VERSION
    {
        return CodecError::UnsupportedVersion { what: T::WHAT, found };
    }
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut deserializer) {
        Err(error) => {
            let path = error.path().to_string();
            let field = (!path.is_empty() && path != "?" && path != ".").then_some(path);
            CodecError::Decode { what: T::WHAT, field, source: error.into_inner() }
        }
        // Both decoders read the same format; should they ever disagree, say so plainly.
        Ok(_) => CodecError::Decode {
            what: T::WHAT,
            field: None,
            source: rmp_serde::decode::Error::Syntax("the message decodes only with path tracking".into()),
        },
    }
}

fn field_prefix(field: &Option<String>) -> String {
    field.as_ref().map(|field| format!("field `{field}`: ")).unwrap_or_default()
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
    fn a_bad_value_names_its_field() {
        let bad = rmp_serde::to_vec_named(&serde_json::json!({
            "schema_version": SCHEMA_VERSION, "worker_id": "w-1", "pool": "default", "kinds": [],
            "protocol_versions": [1], "version": "0", "slots": 1, "busy": 0, "started_at": "yesterday",
        }))
        .unwrap();
        let error = decode::<WorkerRecord>(&bad).unwrap_err();
        assert!(error.to_string().starts_with("not a valid worker record message: field `started_at`: "), "{error}");
        let error = decode::<WorkerRecord>(b"\xc1 not msgpack").unwrap_err();
        assert!(!error.to_string().contains("field"), "{error}");
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
