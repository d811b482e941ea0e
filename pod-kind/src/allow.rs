//! The pool's image allow-list (`--allow-image PATTERN`, repeated): which images its pod
//! jobs may run.
//!
//! Patterns are globs on the whole image reference: `*` matches any characters except `/`,
//! `**` matches any characters including `/`, `?` one character other than `/`; everything
//! else matches itself. So `ghcr.io/acme/*` allows `ghcr.io/acme/etl:1.4` but not
//! `ghcr.io/acme/team/x:1`, and `ghcr.io/acme/**` allows both.

/// Longest pattern, in bytes.
pub const PATTERN_MAX_BYTES: usize = 1024;
/// Most patterns a pool may have.
pub const PATTERNS_MAX: usize = 256;

/// The patterns of one pool. Empty: every image is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageAllowList {
    patterns: Vec<String>,
}

impl ImageAllowList {
    /// Checks each pattern (size, count, no whitespace); the error names the wrong one.
    pub fn new(patterns: Vec<String>) -> Result<Self, String> {
        if patterns.len() > PATTERNS_MAX {
            return Err(format!("{} --allow-image patterns given; the limit is {PATTERNS_MAX}", patterns.len()));
        }
        for pattern in &patterns {
            if pattern.is_empty() || pattern.len() > PATTERN_MAX_BYTES {
                return Err(format!("--allow-image `{pattern}` must be 1 to {PATTERN_MAX_BYTES} bytes"));
            }
            if pattern.chars().any(char::is_whitespace) {
                return Err(format!("--allow-image `{}` has whitespace", pattern.escape_debug()));
            }
        }
        Ok(Self { patterns })
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// `Ok` when `image` matches a pattern; otherwise why not, naming the image and the
    /// patterns (the reason a job is dead-lettered with).
    pub fn check(&self, image: &str) -> Result<(), String> {
        if self.patterns.is_empty() {
            return Err(format!(
                "image `{image}` is not allowed: this pool's workers allow no images (start them with --allow-image PATTERN)"
            ));
        }
        if self.patterns.iter().any(|pattern| glob_matches(pattern.as_bytes(), image.as_bytes())) {
            return Ok(());
        }
        Err(format!(
            "image `{image}` is not allowed: it matches none of this pool's --allow-image patterns ({})",
            self.patterns.iter().map(|pattern| format!("`{pattern}`")).collect::<Vec<_>>().join(", ")
        ))
    }
}

/// Whether `text` matches `pattern` as a whole. Iterative, with one backtrack point per
/// star kind, so hostile patterns cost O(len(pattern) × len(text)) at worst.
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    // Memoised on (pattern index, text index): bounded by the two lengths (≤ 1 KiB each).
    let mut seen = vec![false; (pattern.len() + 1) * (text.len() + 1)];
    let mut stack = vec![(0usize, 0usize)];
    while let Some((p, t)) = stack.pop() {
        let key = p * (text.len() + 1) + t;
        if seen[key] {
            continue;
        }
        seen[key] = true;
        if p == pattern.len() {
            if t == text.len() {
                return true;
            }
            continue;
        }
        match pattern[p] {
            b'*' if pattern.get(p + 1) == Some(&b'*') => {
                stack.push((p + 2, t));
                if t < text.len() {
                    stack.push((p, t + 1));
                }
            }
            b'*' => {
                stack.push((p + 1, t));
                if t < text.len() && text[t] != b'/' {
                    stack.push((p, t + 1));
                }
            }
            b'?' => {
                if t < text.len() && text[t] != b'/' {
                    stack.push((p + 1, t + 1));
                }
            }
            literal => {
                if t < text.len() && text[t] == literal {
                    stack.push((p + 1, t + 1));
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(patterns: &[&str]) -> ImageAllowList {
        ImageAllowList::new(patterns.iter().map(|p| p.to_string()).collect()).unwrap()
    }

    #[test]
    fn single_star_stays_within_a_path_segment_and_double_star_crosses_them() {
        let one = list(&["ghcr.io/acme/*"]);
        assert!(one.check("ghcr.io/acme/etl:1.4").is_ok());
        assert!(one.check("ghcr.io/acme/team/x:1").is_err());
        assert!(one.check("ghcr.io/acmecorp/etl:1").is_err());
        assert!(one.check("evil.io/ghcr.io/acme/etl").is_err());
        let any = list(&["ghcr.io/acme/**"]);
        assert!(any.check("ghcr.io/acme/team/x:1").is_ok());
        let exact = list(&["python:3.12-slim", "busybox:1.3?"]);
        assert!(exact.check("python:3.12-slim").is_ok());
        assert!(exact.check("python:3.12").is_err());
        assert!(exact.check("busybox:1.36").is_ok());
    }

    #[test]
    fn a_refusal_names_the_image_and_the_patterns() {
        let error = list(&["ghcr.io/acme/*", "python:3.12"]).check("docker.io/evil:latest").unwrap_err();
        assert_eq!(
            error,
            "image `docker.io/evil:latest` is not allowed: it matches none of this pool's --allow-image patterns (`ghcr.io/acme/*`, `python:3.12`)"
        );
    }

    #[test]
    fn no_patterns_refuse_every_image_and_say_how_to_allow_some() {
        let error = ImageAllowList::default().check("busybox").unwrap_err();
        assert!(error.contains("allow no images") && error.contains("--allow-image"), "{error}");
    }

    #[test]
    fn bad_patterns_are_refused_by_name() {
        assert!(ImageAllowList::new(vec!["a b".into()]).unwrap_err().contains("`a b`"));
        assert!(ImageAllowList::new(vec![String::new()]).is_err());
    }

    #[test]
    fn hostile_patterns_finish_quickly() {
        let pattern = "*a".repeat(500);
        let text = "a".repeat(1000) + "b";
        let began = std::time::Instant::now();
        assert!(!glob_matches(pattern.as_bytes(), text.as_bytes()));
        assert!(began.elapsed() < std::time::Duration::from_secs(2));
    }
}
