//! Value types of the schema that are parsed from more than one TOML shape.
//!
//! Owns: `Memory` (bytes, or `"256MiB"`-style strings), `UserMemory` (also `"75%"` of MemTotal)
//! and `string_map` (tables whose values are strings but may be written as integers or bools,
//! e.g. `sysctl` and `env`). Parsing happens while deserialising, so a bad value is reported
//! with its key path and line like any other type error.
//! Must not: know about MemTotal or cgroups; turning a percentage into bytes is the consumer's job.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A size in bytes, written as an integer or as a string with a unit: `"256MiB"`, `"1.5G"`,
/// `"100MB"`. `K`/`M`/`G`/`T` and `Ki`/`KiB`… are binary (as Docker does), `KB`/`MB`… decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Memory(pub u64);

/// The `limits.user.memory` fence: bytes, or a percentage of MemTotal (`"75%"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserMemory {
    /// An absolute size.
    Bytes(u64),
    /// 1..=100 percent of MemTotal.
    Percent(u8),
}

impl Default for UserMemory {
    fn default() -> Self {
        UserMemory::Percent(75)
    }
}

/// Parses a memory size; the error is the reason text.
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "Ki" | "KiB" => 1 << 10,
        "M" | "m" | "Mi" | "MiB" => 1 << 20,
        "G" | "g" | "Gi" | "GiB" => 1 << 30,
        "T" | "t" | "Ti" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "invalid memory size {text:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    let bad = || {
        format!("invalid memory size {text:?}: expected a number with an optional unit, like \"256MiB\"")
    };
    if num.is_empty() {
        return Err(bad());
    }
    let bytes = if num.contains('.') {
        let f: f64 = num.parse().map_err(|_| bad())?;
        let b = f * mult as f64;
        if !b.is_finite() || b >= i64::MAX as f64 {
            return Err(format!("invalid memory size {text:?}: too large"));
        }
        b as u64
    } else {
        let n: u64 = num.parse().map_err(|_| bad())?;
        n.checked_mul(mult)
            .filter(|b| *b <= i64::MAX as u64)
            .ok_or_else(|| format!("invalid memory size {text:?}: too large"))?
    };
    if bytes == 0 {
        return Err(format!(
            "invalid memory size {text:?}: must be greater than 0"
        ));
    }
    Ok(bytes)
}

fn parse_user_memory(text: &str) -> Result<UserMemory, String> {
    match text.trim().strip_suffix('%') {
        Some(pct) => match pct.trim().parse::<u8>() {
            Ok(p) if (1..=100).contains(&p) => Ok(UserMemory::Percent(p)),
            _ => Err(format!(
                "invalid percentage {text:?}: expected a whole number from 1% to 100%"
            )),
        },
        None => parse_memory(text).map(UserMemory::Bytes),
    }
}

fn bytes_from_int<E: de::Error>(v: i64) -> Result<u64, E> {
    if v <= 0 {
        return Err(E::custom(format!(
            "invalid memory size {v}: must be greater than 0"
        )));
    }
    Ok(v as u64)
}

struct MemoryVisitor;

impl Visitor<'_> for MemoryVisitor {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size in bytes or a string like \"256MiB\"")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        bytes_from_int(v)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        bytes_from_int(i64::try_from(v).unwrap_or(i64::MAX))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_memory(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MemoryVisitor).map(Memory)
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

struct UserMemoryVisitor;

impl Visitor<'_> for UserMemoryVisitor {
    type Value = UserMemory;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size in bytes, a string like \"2GiB\", or a percentage like \"75%\"")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<UserMemory, E> {
        bytes_from_int(v).map(UserMemory::Bytes)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<UserMemory, E> {
        bytes_from_int(i64::try_from(v).unwrap_or(i64::MAX)).map(UserMemory::Bytes)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<UserMemory, E> {
        parse_user_memory(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for UserMemory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UserMemoryVisitor)
    }
}

impl Serialize for UserMemory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            UserMemory::Bytes(b) => s.serialize_u64(*b),
            UserMemory::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

/// A string that may be written as a TOML string, integer, float or bool.
enum Scalar {
    Text(String),
    Bool(bool),
}

struct ScalarVisitor;

impl Visitor<'_> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, integer or boolean")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

fn scalar_map<'de, D: Deserializer<'de>>(
    d: D,
    t: &str,
    f: &str,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw: BTreeMap<String, Scalar> = BTreeMap::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| match v {
            Scalar::Text(s) => (k, s),
            Scalar::Bool(b) => (k, if b { t } else { f }.to_string()),
        })
        .collect())
}

/// `deserialize_with` for `sysctl`: values may be strings, integers, floats or booleans; numbers
/// keep their decimal text and booleans become `"1"`/`"0"`, as the kernel wants them.
pub fn sysctl_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    scalar_map(d, "1", "0")
}

/// `deserialize_with` for `env`: like `sysctl_map`, but booleans become `"true"`/`"false"`.
pub fn string_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    scalar_map(d, "true", "false")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_strings_parse_with_binary_and_decimal_units() {
        assert_eq!(parse_memory("256MiB"), Ok(256 << 20));
        assert_eq!(parse_memory("1.5G"), Ok(3 << 29));
        assert_eq!(parse_memory("100MB"), Ok(100_000_000));
        assert_eq!(parse_memory("4096"), Ok(4096));
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("5 parsecs").is_err());
        assert!(parse_memory("0").is_err());
    }

    #[test]
    fn user_memory_accepts_percent_bytes_and_units() {
        assert_eq!(parse_user_memory("75%"), Ok(UserMemory::Percent(75)));
        assert_eq!(parse_user_memory("2GiB"), Ok(UserMemory::Bytes(2 << 30)));
        assert!(parse_user_memory("150%").is_err());
        assert!(parse_user_memory("0%").is_err());
    }
}
