//! How much JetStream file storage the coordinator reserves, and for what.
//!
//! On nats-server a stream with a `max_bytes` reserves all of it when it is created or
//! updated (however little it holds), and a stream is refused (JetStream error 10047,
//! "insufficient storage resources") when the reservations would pass the store's limit
//! (`max_file_store`, or the account's storage limit). Streams without a `max_bytes`
//! reserve nothing. Of Sluice's streams only two have one: the job logs and the rejected
//! submissions. They are sized from the store ([`size_streams`], pure), so a small store
//! runs Sluice with less history instead of refusing every term.
//!
//! The store's size cannot be read on a server without accounts (`$JS.API.INFO` reports
//! `max_storage: -1` even with `max_file_store` set), so [`probe_free`] measures what a
//! stream could reserve now with a stream of its own whose `max_bytes` it binary-searches
//! ([`plan`] adds what Sluice's two streams hold already, so every term and every restart
//! computes the same sizes).

use async_nats::jetstream::{self, ErrorCode, stream};
use sluice_proto::names;

use crate::error::{NatsContext, ServiceError};

const MIB: u64 = 1024 * 1024;

/// Least reservable JetStream file storage the coordinator starts on, in bytes: below it
/// the logs stream would hold too little to be of use.
pub const STORE_MIN_BYTES: u64 = 64 * MIB;
/// Share of the store the logs stream takes at most, in percent (`--logs-max-mib` may ask
/// for less).
pub const LOGS_STORE_SHARE_PERCENT: u64 = 25;
/// Share of the store the rejected submissions take at most, in percent.
pub const REJECTED_STORE_SHARE_PERCENT: u64 = 5;
/// Most storage the rejected submissions take on any store, in bytes.
pub const REJECTED_MAX_BYTES: u64 = 256 * MIB;
/// Most storage the logs stream takes unless `--logs-max-mib` says otherwise, in bytes.
pub const LOGS_MAX_BYTES_DEFAULT: u64 = 1024 * MIB;
/// Resolution of the storage measurement, in bytes: the store is known to this (rounded
/// down), and stream sizes are whole multiples of it.
pub const STORE_PROBE_RESOLUTION_BYTES: u64 = MIB;
/// Most JetStream API requests one storage measurement makes (deleting a leftover probe
/// stream, creating it, resizing it, deleting it), in requests. A binary search to 1 MiB
/// needs about log2(store / 1 MiB) resizes: 13 for the 5 GiB past which nothing changes.
pub const STORE_PROBE_API_CALLS_MAX: u32 = 40;

/// What bounds a stream's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// The setting (`--logs-max-mib`, or [`REJECTED_MAX_BYTES`]).
    Setting,
    /// Its share of the store.
    StoreShare,
}

/// The sizes of Sluice's two bounded streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamSizes {
    pub logs_bytes: u64,
    pub logs_bound: Bound,
    pub rejected_bytes: u64,
    pub rejected_bound: Bound,
}

/// The store is smaller than [`STORE_MIN_BYTES`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "JetStream has {} of file storage the coordinator can reserve; it needs at least {}: raise max_file_store in the nats-server configuration (jetstream {{ max_file_store: 1G }}), or free storage other streams reserve",
    mib(*.store_bytes),
    mib(STORE_MIN_BYTES)
)]
pub struct StoreTooSmall {
    pub store_bytes: u64,
}

/// The sizes of the logs stream and the rejected submissions on a store of `store_bytes`
/// (what Sluice can reserve, its own streams' reservations included): the logs take
/// `logs_max_bytes` or [`LOGS_STORE_SHARE_PERCENT`] of the store, whichever is less; the
/// rejected submissions [`REJECTED_MAX_BYTES`] or [`REJECTED_STORE_SHARE_PERCENT`]. Shares
/// are rounded down to [`STORE_PROBE_RESOLUTION_BYTES`].
pub fn size_streams(store_bytes: u64, logs_max_bytes: u64) -> Result<StreamSizes, StoreTooSmall> {
    if store_bytes < STORE_MIN_BYTES {
        return Err(StoreTooSmall { store_bytes });
    }
    let (logs_bytes, logs_bound) = bounded(logs_max_bytes, share(store_bytes, LOGS_STORE_SHARE_PERCENT));
    let (rejected_bytes, rejected_bound) =
        bounded(REJECTED_MAX_BYTES, share(store_bytes, REJECTED_STORE_SHARE_PERCENT));
    Ok(StreamSizes { logs_bytes, logs_bound, rejected_bytes, rejected_bound })
}

/// The store size past which [`size_streams`] gives the same sizes: how far a measurement
/// needs to look.
pub fn store_needed(logs_max_bytes: u64) -> u64 {
    let whole = |bytes: u64, percent: u64| (u128::from(bytes) * 100).div_ceil(u128::from(percent));
    let needed =
        whole(logs_max_bytes, LOGS_STORE_SHARE_PERCENT).max(whole(REJECTED_MAX_BYTES, REJECTED_STORE_SHARE_PERCENT));
    u64::try_from(needed).unwrap_or(u64::MAX).max(STORE_MIN_BYTES)
}

fn share(store_bytes: u64, percent: u64) -> u64 {
    // u128: no overflow for any store.
    let bytes = (u128::from(store_bytes) * u128::from(percent) / 100) as u64;
    bytes - bytes % STORE_PROBE_RESOLUTION_BYTES
}

fn bounded(setting: u64, share: u64) -> (u64, Bound) {
    if setting <= share { (setting, Bound::Setting) } else { (share, Bound::StoreShare) }
}

/// `bytes` in MiB, as a person reads it ("40 MiB", "40.5 MiB").
pub fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

/// What a measurement found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Free {
    /// The most a new stream could reserve now, rounded down to
    /// [`STORE_PROBE_RESOLUTION_BYTES`], at most the `up_to` asked for.
    pub bytes: u64,
    /// JetStream API requests made.
    pub api_calls: u32,
}

/// How many bytes a new stream of `replicas` could reserve now, looking no further than
/// `up_to`: a stream of its own ([`names::STORE_PROBE_STREAM`], no `max_bytes` at first,
/// so its creation always fits) is resized to `up_to`, then binary-searched down to
/// [`STORE_PROBE_RESOLUTION_BYTES`] (resizing nets out its own reservation), then deleted;
/// at most [`STORE_PROBE_API_CALLS_MAX`] requests in all.
pub async fn probe_free(js: &jetstream::Context, up_to: u64, replicas: usize) -> Result<Free, ServiceError> {
    let mut api_calls = 0;
    if up_to == 0 {
        return Ok(Free { bytes: 0, api_calls });
    }
    // One left by a coordinator that died measuring would still hold its reservation.
    api_calls += 1;
    match js.delete_stream(names::STORE_PROBE_STREAM).await {
        Ok(_) => tracing::info!(stream = names::STORE_PROBE_STREAM, "deleted a leftover storage probe"),
        Err(error) if is_stream_not_found(&error) => {}
        Err(error) => return Err(error).context(format!("deleting stream {}", names::STORE_PROBE_STREAM)),
    }
    let config = |max_bytes: i64| stream::Config {
        name: names::STORE_PROBE_STREAM.to_owned(),
        description: Some("Sluice measuring how much storage it can reserve (deleted at once)".to_owned()),
        subjects: vec![names::STORE_PROBE_SUBJECT.to_owned()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_bytes,
        discard: stream::DiscardPolicy::Old,
        num_replicas: replicas,
        ..Default::default()
    };
    api_calls += 1;
    js.create_stream(config(-1)).await.context(format!("creating stream {}", names::STORE_PROBE_STREAM))?;
    // The most known to fit (at first 0: no reservation at all) and the least known not to.
    let (mut fits, mut too_big) = (0u64, None::<u64>);
    let mut candidate = up_to.min(i64::MAX as u64);
    let searched = loop {
        // The final delete needs one request.
        if api_calls + 1 >= STORE_PROBE_API_CALLS_MAX {
            break Ok(());
        }
        api_calls += 1;
        match resize(js, config(candidate as i64)).await {
            Ok(true) => fits = candidate,
            Ok(false) => too_big = Some(candidate),
            Err(error) => break Err(error),
        }
        let Some(too_big) = too_big else { break Ok(()) };
        let half = (too_big - fits) / 2;
        candidate = fits + (half - half % STORE_PROBE_RESOLUTION_BYTES).max(STORE_PROBE_RESOLUTION_BYTES);
        if candidate >= too_big {
            break Ok(());
        }
    };
    api_calls += 1;
    let deleted = js.delete_stream(names::STORE_PROBE_STREAM).await;
    searched?;
    deleted.context(format!("deleting stream {}", names::STORE_PROBE_STREAM))?;
    Ok(Free { bytes: fits, api_calls })
}

/// Sets the probe's `max_bytes`: `false` when the store cannot reserve that much.
async fn resize(js: &jetstream::Context, config: stream::Config) -> Result<bool, ServiceError> {
    use jetstream::context::CreateStreamErrorKind;
    match js.update_stream(&config).await {
        Ok(_) => Ok(true),
        Err(error)
            if matches!(error.kind(), CreateStreamErrorKind::JetStream(ref js)
                // 10023 ("insufficient resources"): a cluster that finds no server with room.
                if js.error_code() == ErrorCode::STORAGE_RESOURCES_EXCEEDED
                    || js.error_code() == ErrorCode::INSUFFICIENT_RESOURCES) =>
        {
            Ok(false)
        }
        Err(error) => Err(error).context(format!("resizing stream {}", names::STORE_PROBE_STREAM)),
    }
}

fn is_stream_not_found(error: &jetstream::context::DeleteStreamError) -> bool {
    matches!(error.kind(), jetstream::context::DeleteStreamErrorKind::JetStream(ref js)
        if js.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// What Sluice's two bounded streams reserve now (0 for one that does not exist yet).
async fn held_by_sluice(js: &jetstream::Context) -> Result<u64, ServiceError> {
    let mut held = 0u64;
    for name in [names::LOGS_STREAM, names::REJECTED_STREAM] {
        match js.get_stream(name).await {
            Ok(stream) => held += u64::try_from(stream.cached_info().config.max_bytes).unwrap_or(0),
            Err(error)
                if matches!(error.kind(), jetstream::context::GetStreamErrorKind::JetStream(ref js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND) => {}
            Err(error) => return Err(error).context(format!("reading stream {name}")),
        }
    }
    Ok(held)
}

/// The sizes for this store: measures it (what is free plus what Sluice's streams hold)
/// and says at INFO what it chose and why. A store below [`STORE_MIN_BYTES`] is
/// [`ServiceError::StoreTooSmall`].
pub async fn plan(js: &jetstream::Context, logs_max_bytes: u64, replicas: usize) -> Result<StreamSizes, ServiceError> {
    let needed = store_needed(logs_max_bytes);
    let held = held_by_sluice(js).await?;
    let free = probe_free(js, needed.saturating_sub(held), replicas).await?;
    let store_bytes = held.saturating_add(free.bytes);
    let sizes = size_streams(store_bytes, logs_max_bytes).map_err(ServiceError::from)?;
    let why = |bound: Bound, setting: &str, percent: u64| match bound {
        Bound::Setting => setting.to_owned(),
        Bound::StoreShare => format!("{percent}% of the store"),
    };
    tracing::info!(
        store = %if store_bytes >= needed { format!("at least {}", mib(needed)) } else { mib(store_bytes) },
        held_by_sluice = %mib(held),
        probe_api_calls = free.api_calls,
        logs = %mib(sizes.logs_bytes),
        logs_bound = %why(sizes.logs_bound, "--logs-max-mib", LOGS_STORE_SHARE_PERCENT),
        rejected = %mib(sizes.rejected_bytes),
        rejected_bound = %why(sizes.rejected_bound, "the 256 MiB cap", REJECTED_STORE_SHARE_PERCENT),
        "JetStream storage measured: sizing the logs stream and the rejected submissions"
    );
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_store_gets_the_settings() {
        let sizes = size_streams(10 * 1024 * MIB, LOGS_MAX_BYTES_DEFAULT).unwrap();
        assert_eq!(
            sizes,
            StreamSizes {
                logs_bytes: 1024 * MIB,
                logs_bound: Bound::Setting,
                rejected_bytes: 256 * MIB,
                rejected_bound: Bound::Setting
            }
        );
    }

    #[test]
    fn a_small_store_gives_each_stream_its_share() {
        let sizes = size_streams(200 * MIB, LOGS_MAX_BYTES_DEFAULT).unwrap();
        assert_eq!((sizes.logs_bytes, sizes.logs_bound), (50 * MIB, Bound::StoreShare));
        assert_eq!((sizes.rejected_bytes, sizes.rejected_bound), (10 * MIB, Bound::StoreShare));
        // The 1.25 GiB the defaults want, less a byte: the logs get their share.
        let sizes = size_streams(1280 * MIB - 1, LOGS_MAX_BYTES_DEFAULT).unwrap();
        assert_eq!((sizes.logs_bytes, sizes.logs_bound), (319 * MIB, Bound::StoreShare));
        assert_eq!((sizes.rejected_bytes, sizes.rejected_bound), (63 * MIB, Bound::StoreShare));
    }

    #[test]
    fn a_smaller_setting_than_the_share_is_kept() {
        let sizes = size_streams(200 * MIB, 20 * MIB).unwrap();
        assert_eq!((sizes.logs_bytes, sizes.logs_bound), (20 * MIB, Bound::Setting));
        assert_eq!(sizes.rejected_bytes, 10 * MIB);
        // The rejected submissions reach their cap at 5.12 GB, whatever the logs take.
        let sizes = size_streams(20 * 256 * MIB, 20 * MIB).unwrap();
        assert_eq!((sizes.rejected_bytes, sizes.rejected_bound), (256 * MIB, Bound::Setting));
    }

    #[test]
    fn shares_are_whole_mebibytes_rounded_down() {
        let sizes = size_streams(201 * MIB + 12345, LOGS_MAX_BYTES_DEFAULT).unwrap();
        assert_eq!(sizes.logs_bytes, 50 * MIB);
        assert_eq!(sizes.rejected_bytes, 10 * MIB);
        let sizes = size_streams(STORE_MIN_BYTES, LOGS_MAX_BYTES_DEFAULT).unwrap();
        assert_eq!((sizes.logs_bytes, sizes.rejected_bytes), (16 * MIB, 3 * MIB));
    }

    #[test]
    fn below_64_mib_it_refuses_naming_the_size_the_minimum_and_the_fix() {
        let refusal = size_streams(STORE_MIN_BYTES - 1, LOGS_MAX_BYTES_DEFAULT).unwrap_err();
        assert_eq!(refusal, StoreTooSmall { store_bytes: STORE_MIN_BYTES - 1 });
        let text = size_streams(40 * MIB, LOGS_MAX_BYTES_DEFAULT).unwrap_err().to_string();
        assert!(text.starts_with("JetStream has 40 MiB of file storage"), "{text}");
        assert!(text.contains("at least 64 MiB") && text.contains("max_file_store"), "{text}");
        assert!(!text.contains('\n'));
        assert!(size_streams(0, LOGS_MAX_BYTES_DEFAULT).is_err());
    }

    #[test]
    fn a_measurement_looks_as_far_as_the_largest_share_that_can_change() {
        // The defaults: the rejected submissions' 256 MiB cap is 5% of 5 GiB.
        assert_eq!(store_needed(LOGS_MAX_BYTES_DEFAULT), 20 * 256 * MIB);
        assert_eq!(store_needed(2048 * MIB), 4 * 2048 * MIB);
        assert_eq!(store_needed(u64::MAX), u64::MAX);
        for logs in [MIB, 100 * MIB, 3000 * MIB] {
            let needed = store_needed(logs);
            assert_eq!(size_streams(needed, logs), size_streams(needed.saturating_mul(4), logs));
        }
    }

    #[test]
    fn sizes_grow_with_the_store_and_never_pass_it() {
        let mut last = size_streams(STORE_MIN_BYTES, LOGS_MAX_BYTES_DEFAULT).unwrap();
        for store in (STORE_MIN_BYTES..8 * 1024 * MIB).step_by(7 * MIB as usize + 1) {
            let sizes = size_streams(store, LOGS_MAX_BYTES_DEFAULT).unwrap();
            assert!(sizes.logs_bytes >= last.logs_bytes && sizes.rejected_bytes >= last.rejected_bytes);
            assert!(sizes.logs_bytes + sizes.rejected_bytes <= store * 30 / 100);
            last = sizes;
        }
    }

    #[test]
    fn docs_limits_names_every_constant_here() {
        let doc = include_str!("../../docs/limits.md");
        let missing: Vec<&str> = include_str!("storage.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("pub const "))
            .filter_map(|rest| rest.split(':').next())
            .filter(|name| !doc.contains(&format!("`coordinator::storage::{name}`")))
            .collect();
        assert!(missing.is_empty(), "docs/limits.md does not name {missing:?}");
    }
}
