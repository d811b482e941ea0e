//! Connecting to NATS (decision 13): the connection options every Sluice binary takes, and
//! the server version check every one makes.
//!
//! [`NatsOptions`] holds what a user gives: the URL, a user and password, a token, an nkey
//! seed file, a `.creds` file, TLS files and an inbox prefix. Passwords and tokens come from
//! a file or an environment variable, never from the command line (argv is readable by
//! every user of the machine). [`NatsOptions::check`] refuses combinations that cannot
//! work; [`NatsOptions::connect_options`] reads the files, each bad one an error naming its
//! flag and path; [`connect_with`] connects.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ClientError;

/// How long the first connection may take before the URL counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the JetStream check waits for its answer. A server answers at once, with its
/// account info or "no responders"; an identity not allowed `$JS.API.INFO` gets no answer
/// at all, and that is no reason to refuse it, so silence only delays by this much.
pub const JETSTREAM_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest credential, key or certificate file read, in bytes.
pub const CREDENTIAL_FILE_MAX_BYTES: u64 = 64 * 1024;
/// The longest inbox prefix, in bytes.
pub const INBOX_PREFIX_MAX_BYTES: usize = 128;
/// The URL when none is given.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// The flags and environment variables of the connection options (decision 13; the Python
/// SDK uses the same names without the `nats-` / `SLUICE_NATS_` prefix).
pub mod flags {
    pub const URL: &str = "--nats-url";
    pub const USER: &str = "--nats-user";
    pub const PASSWORD_FILE: &str = "--nats-password-file";
    pub const TOKEN_FILE: &str = "--nats-token-file";
    pub const NKEY: &str = "--nats-nkey";
    pub const CREDS: &str = "--nats-creds";
    pub const TLS_CA: &str = "--nats-tls-ca";
    pub const TLS_CERT: &str = "--nats-tls-cert";
    pub const TLS_KEY: &str = "--nats-tls-key";
    pub const INBOX_PREFIX: &str = "--nats-inbox-prefix";

    pub const URL_ENV: &str = "SLUICE_NATS_URL";
    pub const USER_ENV: &str = "SLUICE_NATS_USER";
    /// The password itself (not a file).
    pub const PASSWORD_ENV: &str = "SLUICE_NATS_PASSWORD";
    /// The token itself (not a file).
    pub const TOKEN_ENV: &str = "SLUICE_NATS_TOKEN";
    /// The nkey seed file.
    pub const NKEY_ENV: &str = "SLUICE_NATS_NKEY";
    /// The `.creds` file.
    pub const CREDS_ENV: &str = "SLUICE_NATS_CREDS";
    pub const TLS_CA_ENV: &str = "SLUICE_NATS_TLS_CA";
    pub const TLS_CERT_ENV: &str = "SLUICE_NATS_TLS_CERT";
    pub const TLS_KEY_ENV: &str = "SLUICE_NATS_TLS_KEY";
    pub const INBOX_PREFIX_ENV: &str = "SLUICE_NATS_INBOX_PREFIX";
}

/// A password or token: read from a file (its content, without the trailing newline), or
/// given in an environment variable. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    File(PathBuf),
    /// The value, and the variable it came from (for messages).
    Env {
        var: &'static str,
        value: String,
    },
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Env { var, .. } => f.debug_struct("Env").field("var", var).finish_non_exhaustive(),
        }
    }
}

/// How to connect to NATS. Every field but the URL is optional; an empty value is as
/// if none were given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsOptions {
    /// `nats://host:port` (or `tls://…`, which requires TLS); several separated by commas.
    pub url: String,
    /// User name, with [`NatsOptions::password`].
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// A file holding an nkey user seed (`SU…`).
    pub nkey_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and seed), for servers in operator mode.
    pub creds_file: Option<PathBuf>,
    /// CA certificates (PEM) to verify the server with; setting it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and its key (PEM), for servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Where replies to this connection's requests go (`_INBOX` if none). With NATS roles
    /// each role has its own (`sluice_proto::roles::Role::inbox_prefix`).
    pub inbox_prefix: Option<String>,
}

/// A wrong connection option: the flag, the file if one is involved, and what is wrong.
fn bad(flag: &'static str, path: Option<&Path>, reason: impl Into<String>) -> ClientError {
    ClientError::BadOption { flag, path: path.map(Path::to_path_buf), reason: reason.into() }
}

impl NatsOptions {
    /// Options for `url` and nothing else (a server without authentication).
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), ..Self::default() }
    }

    /// The options the `SLUICE_NATS_*` environment variables give (the URL defaults to
    /// [`DEFAULT_URL`]), for programs without a flag parser of their own.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`Self::from_env`] with the variables from `lookup` (testable).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| lookup(name).filter(|value| !value.is_empty());
        let path = |name: &str| get(name).map(PathBuf::from);
        Self {
            url: get(flags::URL_ENV).unwrap_or_else(|| DEFAULT_URL.to_owned()),
            user: get(flags::USER_ENV),
            password: get(flags::PASSWORD_ENV).map(|value| Secret::Env { var: flags::PASSWORD_ENV, value }),
            token: get(flags::TOKEN_ENV).map(|value| Secret::Env { var: flags::TOKEN_ENV, value }),
            nkey_file: path(flags::NKEY_ENV),
            creds_file: path(flags::CREDS_ENV),
            tls_ca: path(flags::TLS_CA_ENV),
            tls_cert: path(flags::TLS_CERT_ENV),
            tls_key: path(flags::TLS_KEY_ENV),
            inbox_prefix: get(flags::INBOX_PREFIX_ENV),
        }
    }

    /// Sets the option of a flag given as `--flag VALUE` (for hand-written argument
    /// parsers): `false` when `flag` is none of the connection flags. A flag overrides
    /// its environment variable. Passwords and tokens are taken from files only.
    pub fn set_flag(&mut self, flag: &str, value: &str) -> bool {
        let path = || Some(PathBuf::from(value));
        match flag {
            flags::URL => self.url = value.to_owned(),
            flags::USER => self.user = Some(value.to_owned()),
            flags::PASSWORD_FILE => self.password = Some(Secret::File(PathBuf::from(value))),
            flags::TOKEN_FILE => self.token = Some(Secret::File(PathBuf::from(value))),
            flags::NKEY => self.nkey_file = path(),
            flags::CREDS => self.creds_file = path(),
            flags::TLS_CA => self.tls_ca = path(),
            flags::TLS_CERT => self.tls_cert = path(),
            flags::TLS_KEY => self.tls_key = path(),
            flags::INBOX_PREFIX => self.inbox_prefix = Some(value.to_owned()),
            _ => return false,
        }
        true
    }

    /// The inbox prefix if none was given (a worker's or the coordinator's is its role's).
    pub fn with_default_inbox_prefix(mut self, prefix: impl Into<String>) -> Self {
        if self.inbox_prefix.as_deref().is_none_or(str::is_empty) {
            self.inbox_prefix = Some(prefix.into());
        }
        self
    }

    /// Refuses combinations that cannot work, naming the flags (no I/O).
    pub fn check(&self) -> Result<(), ClientError> {
        if self.url.trim().is_empty() {
            return Err(bad(flags::URL, None, "no NATS URL given"));
        }
        let user = self.user.as_deref().is_some_and(|user| !user.is_empty());
        let methods = [
            (user || self.password.is_some(), "--nats-user/--nats-password-file"),
            (self.token.is_some(), flags::TOKEN_FILE),
            (self.nkey_file.is_some(), flags::NKEY),
            (self.creds_file.is_some(), flags::CREDS),
        ];
        let given: Vec<&str> = methods.iter().filter(|(set, _)| *set).map(|(_, name)| *name).collect();
        if given.len() > 1 {
            return Err(bad(
                flags::USER,
                None,
                format!("give one way to authenticate, not several: {}", given.join(", ")),
            ));
        }
        if user && self.password.is_none() {
            return Err(bad(
                flags::PASSWORD_FILE,
                None,
                format!("{} needs a password: {} FILE or {}", flags::USER, flags::PASSWORD_FILE, flags::PASSWORD_ENV),
            ));
        }
        if !user && self.password.is_some() {
            return Err(bad(flags::USER, None, format!("a password needs a user: {}", flags::USER)));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => return Err(bad(flags::TLS_KEY, None, format!("{} needs its key", flags::TLS_CERT))),
            (None, Some(_)) => {
                return Err(bad(flags::TLS_CERT, None, format!("{} needs its certificate", flags::TLS_KEY)));
            }
            _ => {}
        }
        if let Some(prefix) = &self.inbox_prefix {
            check_inbox_prefix(prefix)?;
        }
        Ok(())
    }

    /// The async-nats options these give, with `name` shown in the server's connection
    /// list. Reads every file named (each bad one is an error naming its flag and path);
    /// the caller may add its own settings (an event callback) before connecting.
    pub fn connect_options(&self, name: &str) -> Result<async_nats::ConnectOptions, ClientError> {
        self.check()?;
        let mut options =
            async_nats::ConnectOptions::new().name(name).max_reconnects(None).connection_timeout(CONNECT_TIMEOUT);
        if let (Some(user), Some(password)) = (self.user.as_deref().filter(|user| !user.is_empty()), &self.password) {
            options = options.user_and_password(user.to_owned(), read_secret(password, flags::PASSWORD_FILE)?);
        }
        if let Some(token) = &self.token {
            options = options.token(read_secret(token, flags::TOKEN_FILE)?);
        }
        if let Some(path) = &self.nkey_file {
            let seed = read_text(flags::NKEY, path)?.trim().to_owned();
            nkeys::KeyPair::from_seed(&seed).map_err(|error| {
                bad(flags::NKEY, Some(path), format!("not an nkey seed (a line starting with S): {error}"))
            })?;
            options = options.nkey(seed);
        }
        if let Some(path) = &self.creds_file {
            let creds = read_text(flags::CREDS, path)?;
            options = options.credentials(&creds).map_err(|error| {
                bad(flags::CREDS, Some(path), format!("not a NATS credentials file (JWT and nkey seed): {error}"))
            })?;
        }
        if let Some(path) = &self.tls_ca {
            check_pem(flags::TLS_CA, path, "CERTIFICATE")?;
            options = options.add_root_certificates(path.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            check_pem(flags::TLS_CERT, cert, "CERTIFICATE")?;
            check_pem(flags::TLS_KEY, key, "PRIVATE KEY")?;
            options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
        }
        if let Some(prefix) = self.inbox_prefix.as_deref().filter(|prefix| !prefix.is_empty()) {
            options = options.custom_inbox_prefix(prefix);
        }
        Ok(options)
    }
}

/// An inbox prefix is one or more subject tokens without wildcards.
fn check_inbox_prefix(prefix: &str) -> Result<(), ClientError> {
    let valid = prefix.len() <= INBOX_PREFIX_MAX_BYTES
        && prefix.split('.').all(|token| {
            !token.is_empty() && token.bytes().all(|byte| byte.is_ascii_graphic() && byte != b'*' && byte != b'>')
        });
    if prefix.is_empty() || valid {
        Ok(())
    } else {
        Err(bad(
            flags::INBOX_PREFIX,
            None,
            format!(
                "`{prefix}` is not a subject prefix (tokens without spaces or wildcards, at most {INBOX_PREFIX_MAX_BYTES} bytes)"
            ),
        ))
    }
}

/// The text of a credential file, at most [`CREDENTIAL_FILE_MAX_BYTES`].
fn read_text(flag: &'static str, path: &Path) -> Result<String, ClientError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|error| bad(flag, Some(path), format!("cannot read it: {error}")))?;
    let mut text = String::new();
    file.take(CREDENTIAL_FILE_MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|error| bad(flag, Some(path), format!("cannot read it as text: {error}")))?;
    if text.len() as u64 > CREDENTIAL_FILE_MAX_BYTES {
        return Err(bad(flag, Some(path), format!("it is larger than {CREDENTIAL_FILE_MAX_BYTES} bytes")));
    }
    if text.trim().is_empty() {
        return Err(bad(flag, Some(path), "it is empty"));
    }
    Ok(text)
}

/// A password or token, without the newline an editor leaves.
fn read_secret(secret: &Secret, flag: &'static str) -> Result<String, ClientError> {
    match secret {
        Secret::File(path) => Ok(read_text(flag, path)?.trim_end_matches(['\n', '\r']).to_owned()),
        Secret::Env { value, .. } => Ok(value.clone()),
    }
}

/// A PEM file holding a block of `label` (`CERTIFICATE`; any `… PRIVATE KEY`), so a
/// mixed-up certificate and key are named here, not in a TLS handshake error.
fn check_pem(flag: &'static str, path: &Path, label: &str) -> Result<(), ClientError> {
    let text = read_text(flag, path)?;
    let found = text.lines().any(|line| line.starts_with("-----BEGIN ") && line.contains(label));
    if found { Ok(()) } else { Err(bad(flag, Some(path), format!("no PEM `{label}` block in it"))) }
}

/// Connects to `url` with no authentication: see [`connect_with`].
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, ClientError> {
    connect_with(&NatsOptions::new(url), name).await
}

/// Connects with a name that shows in the server's connection list, and checks the server:
/// version 2.14 or newer, with JetStream. Fails at once when nothing answers or the server
/// refuses the credentials; once connected, the client reconnects for ever (a nats-server
/// restart is survived). The server's complaints (a permissions violation) are logged.
///
/// The URL may list several servers separated by commas (the nodes of a cluster): the
/// client connects to one of them and fails over to the others ([`server_addrs`]).
pub async fn connect_with(options: &NatsOptions, name: &str) -> Result<async_nats::Client, ClientError> {
    let url = options.url.clone();
    let client = options
        .connect_options(name)?
        .event_callback(|event| async move {
            match event {
                async_nats::Event::ServerError(error) => tracing::warn!(%error, "nats-server reports an error"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from NATS; reconnecting"),
                async_nats::Event::Connected => tracing::debug!("connected to NATS"),
                other => tracing::debug!(event = %other, "NATS connection event"),
            }
        })
        .connect(server_addrs(&url)?)
        .await
        .map_err(|source| connect_error(&url, source))?;
    check_server(&client)?;
    check_jetstream(&client).await?;
    Ok(client)
}

/// The servers of a NATS URL: one (`nats://host:4222`) or several separated by commas
/// (`nats://a:4222,nats://b:4222`), as the NATS clients of other languages accept them.
/// A part that is not a URL is refused, naming it.
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, ClientError> {
    url.split(',')
        .map(str::trim)
        .map(|part| {
            part.parse::<async_nats::ServerAddr>().map_err(|error| {
                ClientError::Invalid(format!("`{part}` in the NATS URL `{url}` is not a NATS URL: {error}"))
            })
        })
        .collect()
}

/// A refused connection is not an unreachable one: say which.
fn connect_error(url: &str, source: async_nats::ConnectError) -> ClientError {
    use async_nats::ConnectErrorKind;
    match source.kind() {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
            ClientError::Refused { url: url.to_owned(), reason: source.to_string() }
        }
        ConnectErrorKind::Tls => ClientError::Refused { url: url.to_owned(), reason: format!("TLS: {source}") },
        // A TLS alert from the server (a client certificate it wants, one it refuses)
        // arrives as an I/O error: the server is there, and it refused.
        ConnectErrorKind::Io if is_tls_alert(&source.to_string()) => {
            ClientError::Refused { url: url.to_owned(), reason: format!("TLS: {source}") }
        }
        _ => ClientError::Unreachable { url: url.to_owned(), source: source.into() },
    }
}

/// Whether an I/O error's text is a TLS alert or certificate problem.
fn is_tls_alert(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    text.contains("alert") || text.contains("certificate")
}

/// Asks the server for JetStream account info (`$JS.API.INFO`): a server started without
/// `-js` (or an account without JetStream) says so, and every command would otherwise fail
/// later with a misleading reason ("no runs", "not set up").
pub async fn check_jetstream(client: &async_nats::Client) -> Result<(), ClientError> {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::AccountErrorKind;
    let mut js = async_nats::jetstream::new(client.clone());
    js.set_timeout(JETSTREAM_CHECK_TIMEOUT);
    match js.query_account().await {
        Ok(_) => Ok(()),
        Err(error) => match error.kind() {
            AccountErrorKind::JetStreamUnavailable => Err(ClientError::NoJetStream),
            AccountErrorKind::JetStream(api)
                if api.error_code() == ErrorCode::JETSTREAM_NOT_ENABLED
                    || api.error_code() == ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT =>
            {
                Err(ClientError::NoJetStream)
            }
            // Anything else (no answer, a server still starting) is for the command's own
            // calls to report.
            _ => {
                tracing::debug!(%error, "the JetStream check got no clear answer");
                Ok(())
            }
        },
    }
}

/// Checks the connected server is new enough.
pub fn check_server(client: &async_nats::Client) -> Result<(), ClientError> {
    sluice_proto::version::check_server_version(&client.server_info().version).map_err(ClientError::ServerTooOld)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> NatsOptions {
        NatsOptions::new("nats://127.0.0.1:4222")
    }

    fn message(result: Result<(), ClientError>) -> String {
        result.err().map(|error| error.to_string()).unwrap_or_default()
    }

    #[test]
    fn a_user_needs_a_password_and_a_password_a_user() {
        let user = NatsOptions { user: Some("viewer".into()), ..options() };
        assert_eq!(
            message(user.check()),
            "--nats-password-file: --nats-user needs a password: --nats-password-file FILE or SLUICE_NATS_PASSWORD"
        );
        let password = NatsOptions { password: Some(Secret::File("/p".into())), ..options() };
        assert_eq!(message(password.check()), "--nats-user: a password needs a user: --nats-user");
        let both = NatsOptions { password: Some(Secret::File("/p".into())), ..user };
        assert!(both.check().is_ok());
    }

    #[test]
    fn only_one_way_to_authenticate() {
        let nkey_and_creds = NatsOptions { nkey_file: Some("/n".into()), creds_file: Some("/c".into()), ..options() };
        assert_eq!(
            message(nkey_and_creds.check()),
            "--nats-user: give one way to authenticate, not several: --nats-nkey, --nats-creds"
        );
        let token_and_user = NatsOptions {
            user: Some("u".into()),
            password: Some(Secret::File("/p".into())),
            token: Some(Secret::File("/t".into())),
            ..options()
        };
        assert!(message(token_and_user.check()).contains("--nats-user/--nats-password-file, --nats-token-file"));
    }

    #[test]
    fn a_client_certificate_needs_its_key() {
        let cert = NatsOptions { tls_cert: Some("/c.pem".into()), ..options() };
        assert_eq!(message(cert.check()), "--nats-tls-key: --nats-tls-cert needs its key");
        let key = NatsOptions { tls_key: Some("/k.pem".into()), ..options() };
        assert_eq!(message(key.check()), "--nats-tls-cert: --nats-tls-key needs its certificate");
    }

    #[test]
    fn an_inbox_prefix_has_no_wildcards_or_spaces() {
        for good in ["_INBOX_viewer", "_INBOX.a.b", "x"] {
            assert!(NatsOptions { inbox_prefix: Some(good.into()), ..options() }.check().is_ok(), "{good}");
        }
        for bad in ["_INBOX.*", "a.>", "a b", "a..b", "a."] {
            let error = message(NatsOptions { inbox_prefix: Some(bad.into()), ..options() }.check());
            assert!(error.starts_with("--nats-inbox-prefix: "), "{bad}: {error}");
        }
    }

    #[test]
    fn a_missing_or_wrong_file_is_named_with_its_flag() {
        let dir = std::env::temp_dir().join(format!("sluice-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.nk");
        let error = NatsOptions { nkey_file: Some(missing.clone()), ..options() }.connect_options("t").unwrap_err();
        assert!(
            error.to_string().starts_with(&format!("--nats-nkey {}: cannot read it", missing.display())),
            "{error}"
        );
        let not_a_seed = dir.join("bad.nk");
        std::fs::write(&not_a_seed, "hello\n").unwrap();
        let error = NatsOptions { nkey_file: Some(not_a_seed.clone()), ..options() }.connect_options("t").unwrap_err();
        assert!(error.to_string().starts_with(&format!("--nats-nkey {}: not an nkey seed", not_a_seed.display())));
        let seed = dir.join("good.nk");
        std::fs::write(&seed, format!("{}\n", nkeys::KeyPair::new_user().seed().unwrap())).unwrap();
        assert!(NatsOptions { nkey_file: Some(seed), ..options() }.connect_options("t").is_ok());
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let error = NatsOptions { creds_file: Some(empty.clone()), ..options() }.connect_options("t").unwrap_err();
        assert_eq!(error.to_string(), format!("--nats-creds {}: it is empty", empty.display()));
        let key_as_ca = dir.join("key.pem");
        std::fs::write(&key_as_ca, "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n").unwrap();
        let error = NatsOptions { tls_ca: Some(key_as_ca.clone()), ..options() }.connect_options("t").unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("--nats-tls-ca {}: no PEM `CERTIFICATE` block in it", key_as_ca.display())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_environment_gives_every_option_and_flags_override_it() {
        let env = |name: &str| {
            Some(
                match name {
                    flags::URL_ENV => "nats://10.0.0.1:4222",
                    flags::USER_ENV => "alice",
                    flags::PASSWORD_ENV => "secret",
                    flags::CREDS_ENV => "",
                    flags::INBOX_PREFIX_ENV => "_INBOX_submitter_alice",
                    _ => return None,
                }
                .to_owned(),
            )
        };
        let mut options = NatsOptions::from_lookup(env);
        assert_eq!(options.url, "nats://10.0.0.1:4222");
        assert_eq!(options.user.as_deref(), Some("alice"));
        assert_eq!(options.password, Some(Secret::Env { var: flags::PASSWORD_ENV, value: "secret".into() }));
        assert_eq!(options.creds_file, None, "an empty variable is no value");
        assert!(!format!("{options:?}").contains("secret"), "a secret is never printed");
        assert!(options.set_flag(flags::URL, "nats://127.0.0.1:5000"));
        assert!(options.set_flag(flags::PASSWORD_FILE, "/run/secrets/pw"));
        assert!(!options.set_flag("--pool", "gpu"));
        assert_eq!(options.url, "nats://127.0.0.1:5000");
        assert_eq!(options.password, Some(Secret::File("/run/secrets/pw".into())));
        assert_eq!(NatsOptions::from_lookup(|_| None).url, DEFAULT_URL);
    }

    #[test]
    fn a_url_may_list_the_nodes_of_a_cluster() {
        let servers = server_addrs("nats://127.0.0.1:4222, nats://127.0.0.1:4223,127.0.0.1:4224").unwrap();
        let ports: Vec<u16> = servers.iter().map(|server| server.port()).collect();
        assert_eq!(ports, [4222, 4223, 4224]);
        assert_eq!(server_addrs("nats://127.0.0.1:4222").unwrap().len(), 1);
    }

    #[test]
    fn a_part_that_is_no_url_is_named() {
        let error = server_addrs("nats://127.0.0.1:4222,nats://127.0.0.1:notaport").unwrap_err();
        assert!(matches!(error, ClientError::Invalid(_)), "{error:?}");
        assert!(error.to_string().contains("`nats://127.0.0.1:notaport` in the NATS URL"), "{error}");
    }

    #[test]
    fn a_default_inbox_prefix_applies_only_when_none_is_given() {
        assert_eq!(options().with_default_inbox_prefix("_INBOX_a").inbox_prefix.as_deref(), Some("_INBOX_a"));
        let given = NatsOptions { inbox_prefix: Some("_INBOX_b".into()), ..options() };
        assert_eq!(given.with_default_inbox_prefix("_INBOX_a").inbox_prefix.as_deref(), Some("_INBOX_b"));
    }
}
