//! NATS roles (decision 14) and the least-privilege permissions of each, as a nats-server
//! configuration. Pure: no I/O; every subject comes from [`crate::names`].
//!
//! | role | NATS user | may |
//! | --- | --- | --- |
//! | [`Role::Coordinator`] | `coordinator` | everything Sluice has: it owns the topology |
//! | [`Role::Worker`] of pool P | `worker-P` | pull and settle jobs of consumer `pool-P` only; publish events, logs, spawns and dead letters on P's subjects only; renew registry keys `P.*`; read job records (inputs), pools, the registry and P's latest events |
//! | [`Role::Submitter`] `I` | `I` | what a viewer may, plus publish submissions and control requests on `sluice.control.I.>` |
//! | [`Role::Viewer`] | `viewer` | read runs, jobs, schedules, backfills, outcomes, pools, workers, specs, logs, dead letters, rejections, the run index and pending submissions |
//!
//! Each role gets an inbox prefix of its own ([`Role::inbox_prefix`]): whoever may subscribe
//! to the shared `_INBOX.>` reads every reply, so no role may, and each client must connect
//! with its role's prefix (async-nats `ConnectOptions::custom_inbox_prefix`).
//!
//! Nobody but the coordinator may publish into the jobs stream (a job message is run by a
//! worker as its user), create, change or delete streams, consumers or buckets, or write a
//! bucket (a worker writes only its own pool's registry keys). A worker of pool P can still
//! forge outcomes, logs and children of P's jobs: that is what it is trusted with.
//!
//! [`server_authorization`] renders the users of one account, [`crate::names::NATS_ACCOUNT`],
//! as the JSON a nats-server configuration file holds (nats-server reads JSON files).

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::{Value, json};

use crate::names;

/// A NATS identity of Sluice (decision 14).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Owns the topology: creates every stream, consumer and bucket, writes every record.
    Coordinator,
    /// Runs the jobs of one pool.
    Worker { pool: String },
    /// Submits workflows and sends control requests as `identity` (the control subjects
    /// `sluice.control.<identity>.>`), and reads what a viewer reads.
    Submitter { identity: String },
    /// Reads only.
    Viewer,
}

/// Why a role or a user cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// A pool or identity that is not one subject token of `[A-Za-z0-9_-]` (a wildcard
    /// there would widen the role's permissions to other pools or identities).
    #[error("{what} `{name}` is not a name of [A-Za-z0-9_-] (at most {NAME_MAX_CHARS} characters)")]
    BadName { what: &'static str, name: String },
    /// A submitter identity that is another role's user name (`coordinator`, `viewer`,
    /// `worker-…`) or `anonymous`: user names must say which role they are.
    #[error("identity `{0}` is reserved (coordinator, viewer, worker-<pool> and anonymous name other roles)")]
    Reserved(String),
    /// Not an nkey user public key (56 characters of base32, starting with `U`).
    #[error("`{key}` is not an nkey user public key (56 characters of A-Z and 2-7 starting with U)")]
    BadNkey { key: String },
    /// An empty password.
    #[error("the password of NATS user `{user}` is empty")]
    EmptyPassword { user: String },
    /// Two users with the same name or nkey: nats-server refuses the file.
    #[error("NATS user `{user}` is listed twice")]
    Duplicate { user: String },
}

/// Longest pool or identity name accepted here (the spec's name limit).
pub const NAME_MAX_CHARS: usize = crate::limits::NAME_MAX_CHARS;

/// Whether `name` is one safe subject token.
fn check_token(what: &'static str, name: &str) -> Result<(), RoleError> {
    let ok = !name.is_empty()
        && name.chars().count() <= NAME_MAX_CHARS
        && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if ok { Ok(()) } else { Err(RoleError::BadName { what, name: name.to_owned() }) }
}

/// The subjects a role may publish or subscribe to: `allow` lists what it may; `deny`
/// overrides `allow` (kept for defence in depth where a wider allow could creep in later).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rules {
    pub allow: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

impl Rules {
    /// Whether a subject is allowed by these rules (nats-server's reading: some allow
    /// filter matches and no deny filter does).
    pub fn allows(&self, subject: &str) -> bool {
        self.allow.iter().any(|filter| subject_matches(filter, subject))
            && !self.deny.iter().any(|filter| subject_matches(filter, subject))
    }
}

/// A role's permissions, in the shape of nats-server's `permissions` block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Permissions {
    pub publish: Rules,
    pub subscribe: Rules,
}

/// Whether NATS subject filter `filter` (tokens, `*` one token, `>` the rest) matches
/// `subject`. A filter that is itself a wider filter's subset also "matches" token by token
/// (`*` in the subject is matched only by `*` or `>`), so this answers "may it use this
/// filter" too.
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in filter.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(">")) => return false,
            ("*", Some(_)) => {}
            (literal, Some(other)) if literal == other => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// What a role may read of a stream.
#[derive(Clone, Copy)]
enum Read {
    /// Info and direct or stored gets of any message.
    Messages,
    /// Also ordered consumers, push or pull (KV keys and watches, object-store reads, log
    /// tails). Never on a work-queue stream: a consumer there would take its messages.
    Consumers,
}

fn read(publish: &mut Vec<String>, stream: &str, read: Read) {
    publish.extend([
        names::js_api_stream_info(stream),
        names::js_api_direct_get(stream),
        names::js_api_direct_get_last(stream, ">"),
        names::js_api_msg_get(stream),
    ]);
    if let Read::Consumers = read {
        publish.extend([
            names::js_api_consumer_create(stream),
            names::js_api_consumer_info(stream, "*"),
            names::js_api_consumer_next(stream, "*"),
            names::js_flow_control(stream),
        ]);
    }
}

/// Reads of a KV bucket's keys and values (no writes).
fn read_bucket(publish: &mut Vec<String>, bucket: &str) {
    read(publish, &names::kv_stream(bucket), Read::Consumers);
}

/// What viewers and submitters read: every record, stream and spec, never a write.
fn viewer_reads(publish: &mut Vec<String>) {
    for bucket in [
        names::RUNS_BUCKET,
        names::JOBS_BUCKET,
        names::SCHEDULES_BUCKET,
        names::WORKFLOWS_BUCKET,
        names::BACKFILLS_BUCKET,
        names::IDEMPOTENCY_BUCKET,
        names::OUTCOMES_BUCKET,
        names::NOTIFICATIONS_BUCKET,
        names::POOLS_BUCKET,
        names::WORKERS_BUCKET,
        names::ACTIVE_BUCKET,
    ] {
        read_bucket(publish, bucket);
    }
    read(publish, &names::object_stream(names::SPECS_BUCKET), Read::Consumers);
    for stream in [names::LOGS_STREAM, names::DLQ_STREAM, names::REJECTED_STREAM, names::INDEX_STREAM] {
        read(publish, stream, Read::Consumers);
    }
    // Work queues: pending submissions, queued jobs (pool lag), requests not yet answered;
    // no consumers.
    for stream in [names::SUBMIT_STREAM, names::JOBS_STREAM, names::CONTROL_STREAM] {
        read(publish, stream, Read::Messages);
    }
    publish.push(names::js_api_consumer_info(names::JOBS_STREAM, "*"));
}

/// What no role but the coordinator may publish: job messages and retries (a worker runs
/// them as its user), and any write of a record.
fn writes_of_the_coordinator() -> Vec<String> {
    vec![
        names::JOBS_SUBJECTS.to_owned(),
        names::RETRIES_SUBJECTS.to_owned(),
        names::STOP_SUBJECTS.to_owned(),
        names::INDEX_SUBJECTS.to_owned(),
        names::REJECTED_SUBJECTS.to_owned(),
        names::OBJECT_STORE_ALL.to_owned(),
        names::NOTIFY_SUBJECTS.to_owned(),
    ]
}

impl Role {
    /// The NATS user name of this role: `coordinator`, `worker-<pool>`, the submitter's
    /// identity, `viewer`. A submitter's requests go out under its user name, so the two
    /// are the same.
    pub fn user_name(&self) -> String {
        match self {
            Self::Coordinator => "coordinator".to_owned(),
            Self::Worker { pool } => format!("worker-{pool}"),
            Self::Submitter { identity } => identity.clone(),
            Self::Viewer => "viewer".to_owned(),
        }
    }

    /// The role a NATS user name stands for: the inverse of [`Role::user_name`]
    /// (`coordinator`, `viewer`, `worker-<pool>`; any other name is a submitter's identity).
    pub fn from_user_name(name: &str) -> Self {
        match name {
            "coordinator" => Self::Coordinator,
            "viewer" => Self::Viewer,
            _ => match name.strip_prefix("worker-").filter(|pool| !pool.is_empty()) {
                Some(pool) => Self::Worker { pool: pool.to_owned() },
                None => Self::Submitter { identity: name.to_owned() },
            },
        }
    }

    /// The inbox prefix this role's clients must connect with: `_INBOX_coordinator`,
    /// `_INBOX_worker_<pool>`, `_INBOX_submitter_<identity>`, `_INBOX_viewer` (distinct for
    /// every role: the part after `_INBOX_` starts with the role's kind).
    pub fn inbox_prefix(&self) -> String {
        match self {
            Self::Coordinator => names::inbox_prefix("coordinator"),
            Self::Worker { pool } => names::inbox_prefix(&format!("worker_{pool}")),
            Self::Submitter { identity } => names::inbox_prefix(&format!("submitter_{identity}")),
            Self::Viewer => names::inbox_prefix("viewer"),
        }
    }

    /// Checks the pool or identity is one safe subject token.
    pub fn check(&self) -> Result<(), RoleError> {
        match self {
            Self::Worker { pool } => check_token("pool", pool),
            Self::Submitter { identity } => {
                check_token("identity", identity)?;
                let taken = Self::from_user_name(identity) != *self || identity == names::ANONYMOUS_IDENTITY;
                if taken { Err(RoleError::Reserved(identity.clone())) } else { Ok(()) }
            }
            Self::Coordinator | Self::Viewer => Ok(()),
        }
    }

    /// This role's permissions. Every role may ask `$JS.API.INFO` and subscribe only to its
    /// own inbox prefix.
    pub fn permissions(&self) -> Result<Permissions, RoleError> {
        self.check()?;
        let inbox = names::inbox_filter(&self.inbox_prefix());
        let mut publish = vec![names::JS_API_INFO.to_owned()];
        let mut subscribe = vec![inbox];
        let mut publish_deny = Vec::new();
        match self {
            Self::Coordinator => {
                publish.extend(
                    [
                        names::SLUICE_ALL,
                        names::JS_API_ALL,
                        names::JS_ACK_ALL,
                        names::JS_FLOW_CONTROL_ALL,
                        names::KV_ALL,
                        names::OBJECT_STORE_ALL,
                    ]
                    .map(str::to_owned),
                );
            }
            Self::Worker { pool } => {
                let consumer = names::pool_consumer(pool);
                publish.extend([
                    // Its pool's consumer, and nothing else of the jobs stream.
                    names::js_api_consumer_info(names::JOBS_STREAM, &consumer),
                    names::js_api_consumer_next(names::JOBS_STREAM, &consumer),
                    names::js_ack(names::JOBS_STREAM, &consumer),
                    // What its jobs report and hand on, on its pool's subjects only.
                    names::pool_events_filter(pool),
                    names::pool_logs_filter(pool),
                    names::pool_spawns_filter(pool),
                    names::pool_dlq_filter(pool),
                    // A redelivery reads the job's latest event (its pool's only).
                    names::js_api_direct_get_last(names::EVENTS_STREAM, &names::pool_events_filter(pool)),
                    // Its registry entry (renewed, deleted at exit): its pool's keys only.
                    names::pool_workers_filter(pool),
                ]);
                // The inputs of its jobs (by key), the declared pools and the registry (live
                // workers' kinds: listed). Not runs, schedules, specs or anything else.
                read(&mut publish, &names::kv_stream(names::JOBS_BUCKET), Read::Messages);
                for bucket in [names::POOLS_BUCKET, names::WORKERS_BUCKET] {
                    read_bucket(&mut publish, bucket);
                }
                subscribe.push(names::STOP_SUBJECTS.to_owned());
                publish_deny.extend(writes_of_the_coordinator());
                publish_deny.extend([names::SUBMIT_SUBJECT.to_owned(), names::CONTROL_SUBJECTS.to_owned()]);
            }
            Self::Submitter { identity } => {
                viewer_reads(&mut publish);
                publish.extend([names::SUBMIT_SUBJECT.to_owned(), names::control_identity_filter(identity)]);
                publish_deny.extend(writes_of_the_coordinator());
                publish_deny.extend([
                    names::EVENTS_SUBJECTS.to_owned(),
                    names::LOGS_SUBJECTS.to_owned(),
                    names::SPAWNS_SUBJECTS.to_owned(),
                    names::DLQ_SUBJECTS.to_owned(),
                    names::KV_ALL.to_owned(),
                ]);
            }
            Self::Viewer => {
                viewer_reads(&mut publish);
                publish_deny.extend([names::SLUICE_ALL, names::KV_ALL, names::OBJECT_STORE_ALL].map(str::to_owned));
            }
        }
        if !matches!(self, Self::Coordinator) {
            // Nobody but the coordinator changes the topology; and nobody reads the shared
            // inbox.
            publish_deny.extend(
                [
                    "STREAM.CREATE",
                    "STREAM.UPDATE",
                    "STREAM.DELETE",
                    "STREAM.PURGE",
                    "STREAM.MSG.DELETE",
                    "CONSUMER.DELETE",
                ]
                .map(|api| format!("$JS.API.{api}.>")),
            );
        }
        let subscribe_deny =
            if matches!(self, Self::Coordinator) { Vec::new() } else { vec![names::SHARED_INBOX_ALL.to_owned()] };
        Ok(Permissions {
            publish: Rules { allow: publish, deny: publish_deny },
            subscribe: Rules { allow: subscribe, deny: subscribe_deny },
        })
    }
}

/// How a user proves who it is to nats-server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// An nkey user public key (`U…`); the client holds the seed (`--nats-nkey FILE`).
    Nkey { public_key: String },
    /// A password for the role's [`Role::user_name`]: a bcrypt hash (`$2a$…`, made with
    /// `nats server passwd`) for production, or plain text for development.
    Password { password: String },
}

/// One NATS user: a role and its credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleUser {
    pub role: Role,
    pub credential: Credential,
}

impl RoleUser {
    /// A user of `role` with an nkey.
    pub fn nkey(role: Role, public_key: impl Into<String>) -> Self {
        Self { role, credential: Credential::Nkey { public_key: public_key.into() } }
    }

    /// A user of `role` with a password (bcrypt hash or plain text).
    pub fn password(role: Role, password: impl Into<String>) -> Self {
        Self { role, credential: Credential::Password { password: password.into() } }
    }

    /// This user's entry in an account's `users` list.
    pub fn server_entry(&self) -> Result<Value, RoleError> {
        let permissions = serde_json::to_value(self.role.permissions()?).unwrap_or(Value::Null);
        match &self.credential {
            Credential::Nkey { public_key } => {
                check_nkey(public_key)?;
                Ok(json!({ "nkey": public_key, "permissions": permissions }))
            }
            Credential::Password { password } => {
                let user = self.role.user_name();
                if password.is_empty() {
                    return Err(RoleError::EmptyPassword { user });
                }
                Ok(json!({ "user": user, "password": password, "permissions": permissions }))
            }
        }
    }

    /// What makes this user distinct for nats-server: its nkey, or its user name.
    fn key(&self) -> String {
        match &self.credential {
            Credential::Nkey { public_key } => public_key.clone(),
            Credential::Password { .. } => self.role.user_name(),
        }
    }
}

/// An nkey user public key: 56 characters of base32 starting with `U`.
fn check_nkey(key: &str) -> Result<(), RoleError> {
    let ok = key.len() == 56
        && key.starts_with('U')
        && key.bytes().all(|byte| byte.is_ascii_uppercase() || (b'2'..=b'7').contains(&byte));
    if ok { Ok(()) } else { Err(RoleError::BadNkey { key: key.to_owned() }) }
}

/// The authorization part of a nats-server configuration for `users`: the top-level
/// `accounts` block with the one account [`names::NATS_ACCOUNT`], JetStream enabled in it,
/// and each user with its role's permissions:
///
/// ```json
/// {"accounts": {"SLUICE": {"jetstream": "enabled", "users": [
///     {"nkey": "U…", "permissions": {"publish": {"allow": […], "deny": […]}, "subscribe": {…}}},
///     {"user": "viewer", "password": "$2a$…", "permissions": {…}}]}}}
/// ```
///
/// Merge its keys into the server's configuration object (which also says `jetstream`,
/// `listen`, …) and write it as JSON: nats-server reads JSON configuration files.
pub fn server_authorization(users: &[RoleUser]) -> Result<Value, RoleError> {
    let mut seen = BTreeSet::new();
    let mut entries = Vec::with_capacity(users.len());
    for user in users {
        if !seen.insert(user.key()) {
            return Err(RoleError::Duplicate { user: user.key() });
        }
        entries.push(user.server_entry()?);
    }
    Ok(json!({ "accounts": { names::NATS_ACCOUNT: { "jetstream": "enabled", "users": entries } } }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RunId;

    fn worker(pool: &str) -> Role {
        Role::Worker { pool: pool.to_owned() }
    }

    fn submitter(identity: &str) -> Role {
        Role::Submitter { identity: identity.to_owned() }
    }

    fn run() -> RunId {
        "0190f5c2-7d3a-7b4e-8a1f-2c3d4e5f6a7b".parse().unwrap()
    }

    fn can_publish(role: &Role, subject: &str) -> bool {
        role.permissions().unwrap().publish.allows(subject)
    }

    fn can_subscribe(role: &Role, subject: &str) -> bool {
        role.permissions().unwrap().subscribe.allows(subject)
    }

    #[test]
    fn subject_filters_match_like_nats() {
        assert!(subject_matches("a.>", "a.b"));
        assert!(subject_matches("a.>", "a.b.c"));
        assert!(!subject_matches("a.>", "a"));
        assert!(subject_matches("a.*.c", "a.b.c"));
        assert!(!subject_matches("a.*.c", "a.b.c.d"));
        assert!(!subject_matches("a.*", "a.>"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.bc"));
        assert!(!subject_matches("a.b.c", "a.b"));
    }

    #[test]
    fn only_the_coordinator_publishes_job_messages_and_retries() {
        let id = run();
        let job = names::job_subject("default", &id, "extract");
        let retry = names::retry_subject("default", &id, "extract");
        assert!(can_publish(&Role::Coordinator, &job));
        assert!(can_publish(&Role::Coordinator, &retry));
        for role in [worker("default"), submitter("alice"), Role::Viewer] {
            assert!(!can_publish(&role, &job), "{role:?}");
            assert!(!can_publish(&role, &retry), "{role:?}");
            assert!(!can_publish(&role, &names::kv_subject(names::RUNS_BUCKET, &id.to_string())), "{role:?}");
            assert!(!can_publish(&role, &names::stop_subject(&id)), "{role:?}");
            // A notice names a URL the coordinator calls: only the coordinator makes them.
            assert!(!can_publish(&role, &names::notify_subject("data-team", Some(&id))), "{role:?}");
        }
        assert!(can_publish(&Role::Coordinator, &names::notify_subject("data-team", Some(&id))));
    }

    #[test]
    fn a_worker_publishes_only_on_its_own_pools_subjects() {
        let (id, gpu) = (run(), worker("gpu"));
        assert!(can_publish(&gpu, &names::event_subject("gpu", &id, "a.b")));
        assert!(can_publish(&gpu, &names::log_subject("gpu", &id, 2, "a")));
        assert!(can_publish(&gpu, &names::spawn_subject("gpu", &id, "a", 0, 1)));
        assert!(can_publish(&gpu, &names::dlq_subject("gpu", Some(&id), Some("a"))));
        assert!(can_publish(&gpu, &names::kv_subject(names::WORKERS_BUCKET, &names::worker_key("gpu", "host-1"))));
        assert!(can_publish(&gpu, &names::js_api_consumer_next(names::JOBS_STREAM, "pool-gpu")));
        assert!(can_publish(&gpu, "$JS.ACK.SLUICE_JOBS.pool-gpu.1.2.3.4.5.6.7"));
        for other in [
            names::event_subject("cpu", &id, "a"),
            names::log_subject("cpu", &id, 1, "a"),
            names::spawn_subject("cpu", &id, "a", 0, 1),
            names::dlq_subject("cpu", Some(&id), Some("a")),
            names::kv_subject(names::WORKERS_BUCKET, &names::worker_key("cpu", "host-1")),
            names::js_api_consumer_next(names::JOBS_STREAM, "pool-cpu"),
            "$JS.ACK.SLUICE_JOBS.pool-cpu.1.2.3.4.5.6.7".to_owned(),
            names::js_api_direct_get_last(names::EVENTS_STREAM, &names::event_subject("cpu", &id, "a")),
            names::SUBMIT_SUBJECT.to_owned(),
            names::control_subject("worker-gpu", None),
        ] {
            assert!(!can_publish(&gpu, &other), "{other}");
        }
    }

    #[test]
    fn a_worker_reads_job_records_and_its_pools_events_but_not_runs() {
        let (id, gpu) = (run(), worker("gpu"));
        let key = names::kv_subject(names::JOBS_BUCKET, &names::job_key(&id, "a"));
        let kv_jobs = names::kv_stream(names::JOBS_BUCKET);
        assert!(can_publish(&gpu, &names::js_api_direct_get_last(&kv_jobs, &key)));
        assert!(can_publish(
            &gpu,
            &names::js_api_direct_get_last(names::EVENTS_STREAM, &names::event_subject("gpu", &id, "a"))
        ));
        let kv_runs = names::kv_stream(names::RUNS_BUCKET);
        for read in [
            names::js_api_stream_info(&kv_runs),
            names::js_api_direct_get(&kv_runs),
            names::js_api_msg_get(&kv_runs),
            names::js_api_consumer_create(&kv_runs),
            // The whole events stream (a get by sequence names no subject).
            names::js_api_direct_get(names::EVENTS_STREAM),
            names::js_api_msg_get(names::EVENTS_STREAM),
            names::js_api_stream_info(&names::object_stream(names::SPECS_BUCKET)),
        ] {
            assert!(!can_publish(&gpu, &read), "{read}");
        }
        assert!(can_subscribe(&gpu, &names::stop_subject(&id)));
    }

    #[test]
    fn a_submitter_acts_only_under_its_own_identity() {
        let (id, alice) = (run(), submitter("alice"));
        assert!(can_publish(&alice, names::SUBMIT_SUBJECT));
        assert!(can_publish(&alice, &names::control_subject("alice", Some(&id))));
        assert!(can_publish(&alice, &names::control_subject("alice", None)));
        assert!(!can_publish(&alice, &names::control_subject("bob", Some(&id))));
        assert!(!can_publish(&alice, &names::control_subject(names::ANONYMOUS_IDENTITY, None)));
        assert!(!can_publish(&alice, &names::event_subject("default", &id, "a")));
        assert!(!can_publish(&alice, &names::log_subject("default", &id, 1, "a")));
        assert!(can_publish(&alice, &names::js_api_consumer_create(&names::kv_stream(names::OUTCOMES_BUCKET))));
    }

    #[test]
    fn a_viewer_reads_everything_and_writes_nothing() {
        let (id, viewer) = (run(), Role::Viewer);
        assert!(!can_publish(&viewer, names::SUBMIT_SUBJECT));
        assert!(!can_publish(&viewer, &names::control_subject("viewer", Some(&id))));
        assert!(!can_publish(&viewer, &names::control_subject(names::ANONYMOUS_IDENTITY, None)));
        for bucket in [
            names::RUNS_BUCKET,
            names::JOBS_BUCKET,
            names::OUTCOMES_BUCKET,
            names::WORKERS_BUCKET,
            names::NOTIFICATIONS_BUCKET,
        ] {
            let stream = names::kv_stream(bucket);
            assert!(can_publish(&viewer, &names::js_api_stream_info(&stream)), "{bucket}");
            assert!(can_publish(&viewer, &names::js_api_consumer_create(&stream)), "{bucket}");
            assert!(!can_publish(&viewer, &names::kv_subject(bucket, "x")), "{bucket}");
        }
        assert!(can_publish(&viewer, &names::js_api_consumer_create(names::LOGS_STREAM)));
        assert!(can_publish(&viewer, &names::js_api_direct_get(names::INDEX_STREAM)));
        // No consumer on a work queue: it would take the messages.
        for stream in [names::JOBS_STREAM, names::SUBMIT_STREAM, names::EVENTS_STREAM, names::CONTROL_STREAM] {
            assert!(!can_publish(&viewer, &names::js_api_consumer_create(stream)), "{stream}");
            assert!(!can_publish(&viewer, &format!("{}.x", names::js_api_consumer_create(stream))), "{stream}");
        }
    }

    #[test]
    fn no_role_but_the_coordinator_changes_the_topology() {
        for role in [worker("default"), submitter("alice"), Role::Viewer] {
            for api in [
                "$JS.API.STREAM.CREATE.SLUICE_X",
                "$JS.API.STREAM.DELETE.SLUICE_JOBS",
                "$JS.API.CONSUMER.DELETE.SLUICE_JOBS.pool-default",
            ] {
                assert!(!can_publish(&role, api), "{role:?} {api}");
            }
            assert!(can_publish(&role, names::JS_API_INFO), "{role:?}");
        }
        assert!(can_publish(&Role::Coordinator, "$JS.API.STREAM.CREATE.SLUICE_X"));
    }

    #[test]
    fn each_role_reads_only_its_own_inbox() {
        let roles =
            [Role::Coordinator, worker("a"), worker("a_b"), submitter("a"), submitter("worker_a"), Role::Viewer];
        let prefixes: BTreeSet<String> = roles.iter().map(Role::inbox_prefix).collect();
        assert_eq!(prefixes.len(), roles.len(), "{prefixes:?}");
        for role in &roles {
            let own = format!("{}.abc", role.inbox_prefix());
            assert!(can_subscribe(role, &own), "{role:?}");
            assert!(!can_subscribe(role, "_INBOX.abc"), "{role:?}");
            for other in roles.iter().filter(|other| *other != role) {
                assert!(!can_subscribe(role, &format!("{}.abc", other.inbox_prefix())), "{role:?} reads {other:?}'s");
            }
        }
    }

    #[test]
    fn a_user_name_names_its_role() {
        for role in [Role::Coordinator, worker("gpu"), submitter("alice"), submitter("submitter"), Role::Viewer] {
            assert_eq!(Role::from_user_name(&role.user_name()), role);
        }
        assert_eq!(Role::from_user_name("worker-"), submitter("worker-"));
        for reserved in ["coordinator", "viewer", "worker-gpu", "anonymous"] {
            assert_eq!(submitter(reserved).check(), Err(RoleError::Reserved(reserved.into())), "{reserved}");
        }
    }

    #[test]
    fn a_pool_or_identity_with_a_wildcard_is_refused() {
        for bad in ["*", ">", "a.b", "", "a b"] {
            assert!(matches!(worker(bad).permissions(), Err(RoleError::BadName { what: "pool", .. })), "{bad:?}");
            assert!(matches!(submitter(bad).permissions(), Err(RoleError::BadName { what: "identity", .. })));
        }
        let error = worker("*").permissions().unwrap_err();
        assert_eq!(error.to_string(), "pool `*` is not a name of [A-Za-z0-9_-] (at most 64 characters)");
    }

    const NKEY: &str = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4";

    #[test]
    fn the_server_config_holds_one_account_with_each_user_and_its_permissions() {
        let users = [RoleUser::nkey(worker("gpu"), NKEY), RoleUser::password(Role::Viewer, "$2a$11$abc")];
        let config = server_authorization(&users).unwrap();
        let account = &config["accounts"][names::NATS_ACCOUNT];
        assert_eq!(account["jetstream"], "enabled");
        let entries = account["users"].as_array().unwrap();
        assert_eq!(entries[0]["nkey"], NKEY);
        assert!(entries[0].get("user").is_none());
        let allow = entries[0]["permissions"]["publish"]["allow"].as_array().unwrap();
        assert!(allow.iter().any(|subject| subject == "sluice.events.gpu.>"));
        assert_eq!(entries[1]["user"], "viewer");
        assert_eq!(entries[1]["password"], "$2a$11$abc");
        assert_eq!(entries[1]["permissions"]["subscribe"]["allow"][0], "_INBOX_viewer.>");
    }

    #[test]
    fn bad_users_are_refused_with_what_is_wrong() {
        let bad_key = server_authorization(&[RoleUser::nkey(Role::Viewer, "SUABC")]).unwrap_err();
        assert_eq!(bad_key, RoleError::BadNkey { key: "SUABC".into() });
        let empty = server_authorization(&[RoleUser::password(Role::Viewer, "")]).unwrap_err();
        assert_eq!(empty.to_string(), "the password of NATS user `viewer` is empty");
        let twice = [RoleUser::password(Role::Viewer, "a"), RoleUser::password(Role::Viewer, "b")];
        assert_eq!(server_authorization(&twice).unwrap_err(), RoleError::Duplicate { user: "viewer".into() });
        let bad_pool = server_authorization(&[RoleUser::password(worker("a.b"), "x")]).unwrap_err();
        assert!(matches!(bad_pool, RoleError::BadName { .. }));
    }
}
