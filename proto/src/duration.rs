//! Durations as people write them in YAML: `500ms`, `10s`, `5m`, `2h`, `1d`, `1h30m`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration written with units. Serialised back in the same text form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(Duration);

impl HumanDuration {
    pub const fn from_duration(duration: Duration) -> Self {
        Self(duration)
    }
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
    pub const fn as_duration(&self) -> Duration {
        self.0
    }
}

/// The text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{text}`: {reason} (write e.g. 500ms, 30s, 10m, 2h, 1d or 1h30m)")]
pub struct DurationError {
    pub text: String,
    pub reason: &'static str,
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |reason| DurationError { text: text.chars().take(40).collect(), reason };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(error("it is empty"));
        }
        let mut total_ms: u128 = 0;
        let mut rest = trimmed;
        while !rest.is_empty() {
            let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return Err(error("each part must start with a number"));
            }
            let value: u128 = rest[..digits].parse().map_err(|_| error("number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
            let unit_ms: u128 = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => return Err(error("a unit is missing")),
                _ => return Err(error("unknown unit")),
            };
            rest = &rest[unit_len..];
            total_ms =
                value.checked_mul(unit_ms).and_then(|ms| ms.checked_add(total_ms)).ok_or_else(|| error("too large"))?;
        }
        // Ten years bounds every timer we would set from it.
        if total_ms > 10 * 366 * 86_400_000 {
            return Err(error("longer than ten years"));
        }
        let ms = u64::try_from(total_ms).map_err(|_| error("too large"))?;
        Ok(Self(Duration::from_millis(ms)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        let cases = [
            ("500ms", 500),
            ("10s", 10_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("1h30m", 5_400_000),
        ];
        for (text, ms) in cases {
            assert_eq!(text.parse::<HumanDuration>().unwrap().as_duration(), Duration::from_millis(ms), "{text}");
        }
    }

    #[test]
    fn rejects_bad_text_with_reason() {
        for text in ["", "10", "s", "10x", "1.5s", "-1s", "99999999999999999999999d"] {
            let error = text.parse::<HumanDuration>().unwrap_err();
            assert!(error.to_string().contains("invalid duration"), "{text}: {error}");
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["500ms", "10s", "1h30m", "1d2h3m4s5ms"] {
            let parsed: HumanDuration = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
    }
}
