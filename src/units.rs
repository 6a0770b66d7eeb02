//! Units a user writes in gateway.yaml: sizes (`512KiB`, `10MB`), durations (`250ms`,
//! `1h 30m`); and Unix time.

use schemars::JsonSchema;

/// Now, in Unix seconds (token `exp`, reload timestamps).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix milliseconds, now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes, written as a number or with a unit: `512KiB`, `10MB`, `1GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("invalid size `{text}`: expected e.g. 1048576, 512KiB or 10MB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "KiB" => 1024,
            "MB" => 1000 * 1000,
            "MiB" => 1024 * 1024,
            "GB" => 1000 * 1000 * 1000,
            "GiB" => 1024 * 1024 * 1024,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{text}`: use B, KB, KiB, MB, MiB, GB or GiB"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size `{text}` is too large"))
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Bytes, as a number or with a unit: 512KiB, 10MB, 1GiB",
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^[0-9]+ *(B|KB|kB|KiB|MB|MiB|GB|GiB)?$" }
            ]
        })
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Clone, Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Num(u64),
            Text(String),
        }
        match Repr::deserialize(d)? {
            Repr::Num(n) => Ok(ByteSize(n)),
            Repr::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Durations: whole numbers with a unit (`ms`, `s`, `m`, `h`, `d`), several joined by
/// spaces (`1h 30m`). Nothing else (`5 seconds`, `1.5s`) is accepted, so what the book
/// says is the whole grammar. Used as `#[serde(with = "crate::units::duration")]`.
pub mod duration {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub const PATTERN: &str = "^[0-9]+(ms|s|m|h|d)( [0-9]+(ms|s|m|h|d))*$";

    pub fn parse(text: &str) -> Result<Duration, String> {
        let refuse = || {
            format!("invalid duration `{text}`: write a whole number and a unit (ms, s, m, h, d), e.g. 250ms, 2s, 1m or 1h 30m")
        };
        let mut total = Duration::ZERO;
        for part in text.split(' ') {
            let split = part
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(refuse)?;
            let (digits, unit) = part.split_at(split);
            let n: u64 = digits.parse().map_err(|_| refuse())?;
            let ms = match unit {
                "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                _ => return Err(refuse()),
            };
            let part = n
                .checked_mul(ms)
                .map(Duration::from_millis)
                .ok_or_else(refuse)?;
            total = total.checked_add(part).ok_or_else(refuse)?;
        }
        Ok(total)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    /// Parses inside the string visitor, so an error is located at the value itself.
    struct Text;

    impl serde::de::Visitor<'_> for Text {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as 250ms, 2s, 1m or 1h 30m")
        }

        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
            parse(text).map_err(E::custom)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_str(Text)
    }

    /// The same for an optional duration.
    pub mod option {
        use serde::{Deserializer, Serializer};
        use std::time::Duration;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        /// Present means a duration (`null` is absent).
        struct Some_;

        impl<'de> serde::de::Visitor<'de> for Some_ {
            type Value = Option<Duration>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as 250ms, 2s, 1m or 1h 30m")
            }

            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                super::deserialize(d).map(Some)
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            d.deserialize_option(Some_)
        }
    }
}

/// A duration in the JSON Schema: the same grammar as [`duration::parse`].
pub struct DurationText;

impl JsonSchema for DurationText {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: whole numbers with a unit (ms, s, m, h, d), e.g. 250ms, 2s, 1m, 1h 30m",
            "type": "string",
            "pattern": duration::PATTERN
        })
    }
}

/// A share written `20%` (0% to 100%, at most one decimal), in thousandths: 200.
pub fn per_mille(text: &str) -> Option<u64> {
    let number = text.trim().strip_suffix('%')?.trim();
    let value: f64 = number.parse().ok()?;
    (0.0..=100.0)
        .contains(&value)
        .then(|| (value * 10.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::duration::parse;
    use super::{per_mille, ByteSize};
    use std::time::Duration;

    #[test]
    fn durations_follow_one_grammar() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        for bad in [
            "5 seconds",
            "1.5s",
            "10 minutes",
            "",
            "s",
            "1h  30m",
            "-1s",
            "1us",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let re = regex::Regex::new(super::duration::PATTERN).unwrap();
        assert!(re.is_match("1h 30m") && !re.is_match("1.5s"));
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(ByteSize::parse("10MiB"), Ok(ByteSize(10 << 20)));
        assert_eq!(ByteSize::parse("5 KB"), Ok(ByteSize(5000)));
        assert_eq!(ByteSize::parse("42"), Ok(ByteSize(42)));
        assert!(ByteSize::parse("10 parsecs").is_err());
        assert!(ByteSize::parse("MiB").is_err());
    }

    #[test]
    fn shares_are_thousandths() {
        assert_eq!(per_mille("20%"), Some(200));
        assert_eq!(per_mille(" 12.5 % "), Some(125));
        assert_eq!(per_mille("120%"), None);
        assert_eq!(per_mille("half"), None);
    }
}
