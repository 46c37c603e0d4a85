//! `Secret`: a config string that must never be shown (registry passwords).
//!
//! Owns: the one place a secret's text is reachable ([`Secret::expose`]), a `Debug` that prints
//! `Secret(<redacted>)`, no `Display` at all (so `format!("{}", …)` cannot leak it by accident),
//! and [`Secret::scrub`], which blanks the secret out of a text that may have echoed it (an
//! error message from a server or a library).
//! Serialises as the plain string: `ros config export` must reproduce the node, so an exported
//! file carries the password like the file it came from did.
//! Must not: log, print or compare in non-constant ways anything but equality for config diffs.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What [`Secret::scrub`] puts where the secret was.
pub const REDACTED: &str = "<redacted>";

/// A string that `Debug` never shows.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }

    /// The secret text, for the one place that sends it (an Authorization header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True for the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every occurrence of the secret replaced by [`REDACTED`] (an empty secret
    /// changes nothing).
    pub fn scrub(&self, text: &str) -> String {
        if self.0.is_empty() {
            text.to_string()
        } else {
            text.replace(&self.0, REDACTED)
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_debug_never_shows_the_secret() {
        let s = Secret::new("hunter2-pass");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(Secret(<redacted>))");
        assert_eq!(format!("{s:#?}"), "Secret(<redacted>)");
        assert_eq!(s.expose(), "hunter2-pass");
    }

    #[test]
    fn test_scrub_blanks_every_occurrence() {
        let s = Secret::new("pw1");
        assert_eq!(
            s.scrub("user:pw1 said pw1"),
            "user:<redacted> said <redacted>"
        );
        assert_eq!(Secret::default().scrub("text"), "text");
    }

    #[test]
    fn test_serialises_as_the_plain_string() {
        #[derive(Serialize, Deserialize)]
        struct T {
            password: Secret,
        }
        let t: T = toml::from_str("password = \"s3cret\"").unwrap();
        assert_eq!(t.password.expose(), "s3cret");
        assert_eq!(toml::to_string(&t).unwrap().trim(), "password = \"s3cret\"");
    }
}
