//! A validated, normalised email address.

use crate::error::ApiError;
use std::fmt;

/// The canonical address (the whole of it lower-cased and NFKC-normalised), and the form an
/// account made before canonical addresses may be stored under (the local part as typed, the
/// domain lower-cased), when that differs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress {
    canonical: String,
    legacy: Option<String>,
}

impl EmailAddress {
    /// Trims, refuses control and format characters (`Cc`, `Cf`: U+200B, U+202E…), normalises
    /// (NFKC, then lower case: `Alice@x` and `alice@x` are one account, and so are full-width
    /// look-alikes) and checks the shape (RFC 5321 lengths, a dotted domain of letters, digits and
    /// hyphens, no spaces in the local part).
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        use unicode_normalization::UnicodeNormalization;
        use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
        let invalid = || ApiError::BadRequest { code: "invalid_email", detail: "the email address is not valid".into() };
        let trimmed = raw.trim();
        let hidden = |c: char| matches!(c.general_category(), GeneralCategory::Control | GeneralCategory::Format);
        if trimmed.chars().any(hidden) {
            return Err(invalid());
        }
        let canonical: String = trimmed.nfkc().collect::<String>().to_lowercase();
        if canonical.chars().any(hidden) {
            return Err(invalid());
        }
        let shaped = shape(&canonical).ok_or_else(invalid)?;
        // What the address was stored as before: only for a lookup of an older account.
        let legacy = shape(trimmed).filter(|old| *old != shaped);
        Ok(EmailAddress { canonical: shaped, legacy })
    }

    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// The forms an account of this address may be stored under, the canonical one first.
    pub fn stored_forms(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.canonical.as_str()).chain(self.legacy.as_deref())
    }
}

/// The address with its domain lower-cased, if it has the shape of one.
fn shape(address: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    if local.is_empty() || local.len() > 64 || address.len() > 254 {
        return None;
    }
    if local.chars().any(|c| c.is_whitespace() || c.is_control() || c == '@' || c == '"' || c == ',' || c == '<' || c == '>')
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return None;
    }
    let domain = domain.to_ascii_lowercase();
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if labels.len() < 2
        || !labels.iter().all(label_ok)
        || labels.last().is_some_and(|tld| tld.len() < 2 || tld.chars().all(|c| c.is_ascii_digit()))
    {
        return None;
    }
    Some(format!("{local}@{domain}"))
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl fmt::Debug for EmailAddress {
    // Addresses are personal data: logs get the domain only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domain = self.canonical.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        write!(f, "EmailAddress(***@{domain})")
    }
}

#[cfg(test)]
mod tests {
    use super::EmailAddress;

    #[test]
    fn addresses_are_trimmed_lowercased_whole_and_nfkc_normalised() {
        let parsed = EmailAddress::parse("  Alice.Smith@Example.COM ").unwrap();
        assert_eq!(parsed.as_str(), "alice.smith@example.com");
        assert_eq!(parsed.stored_forms().collect::<Vec<_>>(), vec!["alice.smith@example.com", "Alice.Smith@example.com"]);
        // Full-width letters are the same address as their ASCII forms.
        assert_eq!(EmailAddress::parse("ａｌｉｃｅ@example.com").unwrap().as_str(), "alice@example.com");
        assert_eq!(EmailAddress::parse("bob@example.com").unwrap().stored_forms().count(), 1);
    }

    #[test]
    fn control_and_format_characters_are_refused() {
        for hidden in ["ali\u{200B}ce@example.com", "alice\u{202E}@example.com", "al\u{00AD}ice@example.com", "ali\u{0007}ce@example.com"] {
            assert!(EmailAddress::parse(hidden).is_err(), "{hidden:?} should be refused");
        }
    }

    #[test]
    fn malformed_addresses_are_refused() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a@b",
            "a b@example.com",
            "a@-x.com",
            "a@x..com",
            "a@example.1",
            ".a@example.com",
            "a..b@example.com",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(EmailAddress::parse(&long_local).is_err());
    }
}
