//! Who may do what: `--tokens FILE` lines `NAME ROLE SHA256-OF-TOKEN` (decision 14's UI roles:
//! `viewer` reads, `operator` also acts). The API takes `Authorization: Bearer TOKEN`; only
//! the token's SHA-256 is ever stored. Without a tokens file the server listens on loopback
//! only, and whoever reaches it is the operator `local`.

use std::collections::HashMap;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Most tokens one file may hold.
pub const TOKENS_MAX: usize = 10_000;
/// Largest tokens file, in bytes.
pub const TOKENS_FILE_MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Longest token a request may present, in bytes.
pub const TOKEN_MAX_BYTES: usize = 1024;
/// Who acts when the server runs without tokens (on loopback only).
pub const LOCAL_USER: &str = "local";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
}

impl Role {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
        }
    }
}

/// An authenticated person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
}

/// Why a tokens file cannot be used (the server does not start with it).
#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("--tokens {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("--tokens {path}:{}", .problems.iter().map(|p| format!("\n  - {p}")).collect::<String>())]
    Invalid { path: String, problems: Vec<String> },
}

/// The tokens, by the hex SHA-256 of the token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tokens {
    by_hash: HashMap<String, User>,
}

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let shown = path.display().to_string();
        let read = |source| TokensError::Read { path: shown.clone(), source };
        let bytes = std::fs::metadata(path).map_err(read)?.len();
        if bytes > TOKENS_FILE_MAX_BYTES {
            let problem = format!("the file is {bytes} bytes; the limit is {TOKENS_FILE_MAX_BYTES}");
            return Err(TokensError::Invalid { path: shown, problems: vec![problem] });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::parse(&text).map_err(|problems| TokensError::Invalid { path: shown, problems })
    }

    /// Lines `NAME ROLE SHA256-HEX`; `#` starts a comment; every problem at once, by line.
    pub fn parse(text: &str) -> Result<Self, Vec<String>> {
        let mut by_hash = HashMap::new();
        let mut problems = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                problems
                    .push(format!("line {number}: expected `NAME ROLE SHA256-OF-TOKEN`, got {} fields", fields.len()));
                continue;
            };
            if let Err(problem) = sluice_proto::spec::check_name("user", name) {
                problems.push(format!("line {number}: {problem}"));
            }
            let Some(role) = Role::parse(role) else {
                problems.push(format!("line {number}: role `{role}` is not `viewer` or `operator`"));
                continue;
            };
            let hash = hash.to_ascii_lowercase();
            if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                problems.push(format!(
                    "line {number}: `{hash}` is not a SHA-256 in hex (64 digits; `printf %s TOKEN | sha256sum`)"
                ));
                continue;
            }
            if !names.insert(name.to_owned()) {
                problems.push(format!("line {number}: user `{name}` is listed twice"));
            }
            if by_hash.insert(hash, User { name: name.to_owned(), role }).is_some() {
                problems.push(format!("line {number}: this token's hash is listed twice"));
            }
        }
        if by_hash.len() > TOKENS_MAX {
            problems.push(format!("{} tokens; the limit is {TOKENS_MAX}", by_hash.len()));
        }
        if problems.is_empty() { Ok(Self { by_hash }) } else { Err(problems) }
    }

    /// The user called `name`, if the file still lists them.
    pub fn by_name(&self, name: &str) -> Option<&User> {
        self.by_hash.values().find(|user| user.name == name)
    }

    /// Who presents `token`, if anyone.
    pub fn user(&self, token: &str) -> Option<&User> {
        if token.len() > TOKEN_MAX_BYTES {
            return None;
        }
        self.by_hash.get(&hash(token))
    }
}

/// The hex SHA-256 of a token, as the file holds it.
pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_their_hash_and_bad_lines_are_named() {
        let text = format!(
            "# who may use the API\nalice operator {}\nbob viewer {}  # read only\n",
            hash("s3cret"),
            hash("look")
        );
        let tokens = Tokens::parse(&text).unwrap();
        assert_eq!(tokens.user("s3cret"), Some(&User { name: "alice".into(), role: Role::Operator }));
        assert_eq!(tokens.user("look").map(|user| user.role), Some(Role::Viewer));
        assert_eq!(tokens.user("guess"), None);
        assert_eq!(tokens.user(&"x".repeat(TOKEN_MAX_BYTES + 1)), None);
        let problems = Tokens::parse(&format!(
            "carol admin {h}\ndave operator abc\neve operator\nx.y viewer {h2}\nalice viewer {h3}\nalice viewer {h4}\n",
            h = hash("1"),
            h2 = hash("2"),
            h3 = hash("3"),
            h4 = hash("4"),
        ))
        .unwrap_err();
        let all = problems.join("\n");
        assert!(all.contains("line 1: role `admin` is not `viewer` or `operator`"), "{all}");
        assert!(all.contains("line 2: `abc` is not a SHA-256 in hex"), "{all}");
        assert!(all.contains("line 3: expected `NAME ROLE SHA256-OF-TOKEN`, got 2 fields"), "{all}");
        assert!(all.contains("line 4: user name `x.y` may only use"), "{all}");
        assert!(all.contains("line 6: user `alice` is listed twice"), "{all}");
    }
}
