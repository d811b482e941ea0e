//! UI sessions: after a login with a token, the browser holds an HttpOnly, SameSite=Strict
//! cookie `NAME.EXPIRES.MAC`, the MAC an HMAC-SHA256 under the session key
//! (`--session-key-file`, so replicas that share the file share sessions). The role is not
//! in the cookie: it is read from the tokens file on every request, so a user removed from
//! the file is out at once. Forms carry a CSRF token, the HMAC of the cookie under the same
//! key, so only a page this server rendered for this session can act.

use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The session cookie's name.
pub const COOKIE: &str = "sluice_session";
/// How long a session lasts after its login.
pub const SESSION_TTL: Duration = Duration::hours(12);
/// Fewest bytes a session key file must hold (a 256-bit key).
pub const SESSION_KEY_MIN_BYTES: usize = 32;
/// Most bytes a session key file may hold.
pub const SESSION_KEY_MAX_BYTES: u64 = 4096;
/// Longest cookie value looked at, in bytes.
pub const COOKIE_MAX_BYTES: usize = 512;

type HmacSha256 = Hmac<Sha256>;

/// Why a session key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SessionKeyError {
    #[error("--session-key-file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("--session-key-file {path}: {problem}")]
    Invalid { path: String, problem: String },
}

/// The key sessions and CSRF tokens are signed with.
#[derive(Clone)]
pub struct SessionKey(Vec<u8>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

impl SessionKey {
    /// The file's bytes (surrounding whitespace removed), at least 32 of them.
    pub fn load(path: &Path) -> Result<Self, SessionKeyError> {
        let shown = path.display().to_string();
        let read = |source| SessionKeyError::Read { path: shown.clone(), source };
        let bytes = std::fs::metadata(path).map_err(read)?.len();
        if bytes > SESSION_KEY_MAX_BYTES {
            let problem = format!("the file is {bytes} bytes; the limit is {SESSION_KEY_MAX_BYTES}");
            return Err(SessionKeyError::Invalid { path: shown, problem });
        }
        let content = std::fs::read(path).map_err(read)?;
        let key = content.trim_ascii().to_vec();
        if key.len() < SESSION_KEY_MIN_BYTES {
            let problem = format!(
                "the key is {} bytes; it needs at least {SESSION_KEY_MIN_BYTES} (`head -c 32 /dev/urandom | base64 > FILE`)",
                key.len()
            );
            return Err(SessionKeyError::Invalid { path: shown, problem });
        }
        Ok(Self(key))
    }

    /// A key of this process only (sessions end with it): for `sluice dev` and a server
    /// started without `--session-key-file`.
    pub fn random() -> Self {
        Self(rand::random::<[u8; 32]>().to_vec())
    }

    fn mac(&self, parts: &[&[u8]]) -> HmacSha256 {
        // HMAC takes a key of any length, so this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    /// The cookie value of a session for `user` that ends at `expires`.
    pub fn issue(&self, user: &str, expires: DateTime<Utc>) -> String {
        let expires = expires.timestamp().to_string();
        let tag = self.mac(&[b"session", user.as_bytes(), expires.as_bytes()]).finalize().into_bytes();
        format!("{user}.{expires}.{}", hex(&tag))
    }

    /// The user a cookie value names, if this key signed it and it has not expired at `now`.
    pub fn verify(&self, cookie: &str, now: DateTime<Utc>) -> Option<String> {
        if cookie.len() > COOKIE_MAX_BYTES {
            return None;
        }
        let mut parts = cookie.rsplitn(3, '.');
        let (tag, expires, user) = (parts.next()?, parts.next()?, parts.next()?);
        let tag = unhex(tag)?;
        self.mac(&[b"session", user.as_bytes(), expires.as_bytes()]).verify_slice(&tag).ok()?;
        let expires = DateTime::from_timestamp(expires.parse().ok()?, 0)?;
        (now < expires).then(|| user.to_owned())
    }

    /// The CSRF token of the session whose cookie value is `cookie`.
    pub fn csrf(&self, cookie: &str) -> String {
        hex(&self.mac(&[b"csrf", cookie.as_bytes()]).finalize().into_bytes())
    }

    /// Whether `token` is the CSRF token of `cookie` (compared in constant time).
    pub fn csrf_matches(&self, cookie: &str, token: &str) -> bool {
        unhex(token).is_some_and(|tag| self.mac(&[b"csrf", cookie.as_bytes()]).verify_slice(&tag).is_ok())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 128 {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok()).collect()
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').filter_map(|pair| pair.trim().split_once('=')).find(|(key, _)| *key == name).map(|(_, v)| v)
}

/// The `Set-Cookie` value of a session (`Secure` when the server is reached over HTTPS).
pub fn set_cookie(value: &str, max_age: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", max_age.num_seconds().max(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap()
    }

    #[test]
    fn a_session_verifies_under_its_key_until_it_expires_and_not_once_changed() {
        let key = SessionKey(vec![7; 32]);
        let cookie = key.issue("alice", at(2_000));
        assert_eq!(key.verify(&cookie, at(1_999)).as_deref(), Some("alice"));
        assert_eq!(key.verify(&cookie, at(2_000)), None, "expired");
        assert_eq!(SessionKey(vec![8; 32]).verify(&cookie, at(1_000)), None, "another key");
        let forged = cookie.replacen("alice", "mallory", 1);
        assert_eq!(key.verify(&forged, at(1_000)), None);
        let later = cookie.replacen("2000", "9000", 1);
        assert_eq!(key.verify(&later, at(1_000)), None, "a pushed-out expiry");
        assert_eq!(key.verify("alice", at(1_000)), None);
        assert_eq!(key.verify(&"a.".repeat(400), at(1_000)), None);
    }

    #[test]
    fn a_csrf_token_belongs_to_one_session() {
        let key = SessionKey(vec![7; 32]);
        let (one, two) = (key.issue("alice", at(2_000)), key.issue("bob", at(2_000)));
        let token = key.csrf(&one);
        assert!(key.csrf_matches(&one, &token));
        assert!(!key.csrf_matches(&two, &token));
        assert!(!key.csrf_matches(&one, ""));
        assert!(!key.csrf_matches(&one, "zz"));
    }

    #[test]
    fn a_short_key_file_is_refused_naming_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "short\n").unwrap();
        let error = SessionKey::load(&path).unwrap_err().to_string();
        assert!(error.contains("the key is 5 bytes; it needs at least 32"), "{error}");
        std::fs::write(&path, format!("{}\n", "k".repeat(40))).unwrap();
        assert!(SessionKey::load(&path).is_ok());
    }

    #[test]
    fn cookies_are_found_by_name() {
        assert_eq!(cookie_value("a=1; sluice_session=x.y.z; b=2", COOKIE), Some("x.y.z"));
        assert_eq!(cookie_value("a=1", COOKIE), None);
    }
}
