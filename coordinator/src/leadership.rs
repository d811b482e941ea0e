//! One active coordinator at a time. Coordinators campaign for a lease: a key in KV
//! `sluice-leader`, whose entries expire [`LEASE_TTL`] after they are written. The holder
//! rewrites it every [`LEASE_RENEW_EVERY`]; if it dies, the key expires and a standby's
//! `create` succeeds. A holder that fails to renew stops leading at once; a stale one that
//! still writes is stopped by revision-checked writes (see [`crate::store::Revisions`]).

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use sluice_proto::names;
use tokio_util::sync::CancellationToken;

use crate::error::{NatsContext, ServiceError};

/// How long a lease lives without renewal: a dead leader is replaced within about this.
pub const LEASE_TTL: Duration = Duration::from_secs(5);
/// How often the leader renews (well inside the TTL, so one slow renewal is not fatal).
pub const LEASE_RENEW_EVERY: Duration = Duration::from_millis(1500);
/// How often a standby tries to take the lease.
pub const CAMPAIGN_EVERY: Duration = Duration::from_millis(500);
const _: () = assert!(LEASE_RENEW_EVERY.as_millis() * 3 <= LEASE_TTL.as_millis());

/// The lease bucket (created with the TTL as its max age).
pub async fn bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, ServiceError> {
    js.create_or_update_key_value(kv::Config {
        bucket: names::LEADER_BUCKET.to_owned(),
        description: "Sluice coordinator leadership lease".to_owned(),
        history: 1,
        max_age: LEASE_TTL,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .context("creating KV sluice-leader")
}

/// A held lease.
pub struct Lease {
    store: kv::Store,
    holder: String,
    revision: u64,
}

/// Waits until `holder` holds the lease; `None` if `shutdown` comes first.
pub async fn acquire(store: &kv::Store, holder: &str, shutdown: &CancellationToken) -> Option<Lease> {
    let mut said = false;
    loop {
        match store.create(names::LEADER_KEY, holder.to_owned().into()).await {
            Ok(revision) => return Some(Lease { store: store.clone(), holder: holder.to_owned(), revision }),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                if !said {
                    let leader = store.get(names::LEADER_KEY).await.ok().flatten();
                    let leader = leader.map(|bytes| String::from_utf8_lossy(&bytes).into_owned()).unwrap_or_default();
                    tracing::info!(%leader, "standing by: another coordinator leads");
                    said = true;
                }
            }
            Err(error) => tracing::warn!(%error, "cannot campaign for leadership; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(CAMPAIGN_EVERY) => {}
        }
    }
}

impl Lease {
    /// Renews the lease until `stop` is cancelled, or until a renewal fails: then `lost` is
    /// cancelled (the caller stops leading) and this returns.
    pub async fn keep(&mut self, stop: CancellationToken, lost: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(LEASE_RENEW_EVERY) => {}
            }
            match self.store.update(names::LEADER_KEY, self.holder.clone().into(), self.revision).await {
                Ok(revision) => self.revision = revision,
                Err(error) => {
                    tracing::warn!(%error, "leadership lost: the lease could not be renewed");
                    lost.cancel();
                    return;
                }
            }
        }
    }

    /// Gives the lease up so a standby takes over at once (best effort: otherwise it expires).
    pub async fn release(self) {
        if let Err(error) = self.store.delete_expect_revision(names::LEADER_KEY, Some(self.revision)).await {
            tracing::debug!(%error, "could not release the lease; it will expire");
        }
    }
}
