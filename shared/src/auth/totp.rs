//! Time-based one-time passwords (RFC 6238 over RFC 4226 HOTP): HMAC-SHA-1, 6 digits, 30 s
//! steps, what every authenticator app reads from an `otpauth://` URI; and RFC 4648 base32 for
//! the secret, which is how those apps take it.

use crate::secrets::Secret;
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

pub const STEP_SECS: i64 = 30;
pub const DIGITS: u32 = 6;
/// Steps either side of now that are accepted: clocks drift, and a code typed at the end of its
/// step arrives in the next one (RFC 6238 §5.2 recommends at most one).
pub const DRIFT_STEPS: i64 = 1;
/// 160 bits, the HMAC-SHA-1 block-size recommendation of RFC 4226 §4.
pub const SECRET_BYTES: usize = 20;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

pub fn new_secret() -> Secret<Vec<u8>> {
    let mut bytes = vec![0u8; SECRET_BYTES];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    Secret::new(bytes)
}

/// Base32 without padding, as authenticator apps expect it.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The HOTP value of `secret` at `counter` (RFC 4226 §5.3: dynamic truncation), `DIGITS` long.
pub fn hotp(secret: &[u8], counter: u64) -> u32 {
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let value = u32::from_be_bytes([digest[offset] & 0x7f, digest[offset + 1], digest[offset + 2], digest[offset + 3]]);
    value % 10u32.pow(DIGITS)
}

/// The 30-second step `unix_secs` falls in.
pub fn step_at(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(STEP_SECS)
}

/// The step whose code `code` is, among now's and `DRIFT_STEPS` either side; `None` if it is
/// none of them (or not 6 digits). Every candidate is compared in constant time.
pub fn matching_step(secret: &[u8], code: &str, unix_secs: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step_at(unix_secs);
    let mut found = None;
    for step in now - DRIFT_STEPS..=now + DRIFT_STEPS {
        let Ok(counter) = u64::try_from(step) else { continue };
        let expected = format!("{:0width$}", hotp(secret, counter), width = DIGITS as usize);
        if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
            found = Some(step);
        }
    }
    found
}

/// The `otpauth://` URI an authenticator app scans (Google's Key Uri Format): the label is
/// `issuer:account`, every parameter spelled out.
pub fn otpauth_uri(issuer: &str, account: &str, secret_base32: &str) -> String {
    let (issuer, account) = (percent_encode(issuer), percent_encode(account));
    format!("otpauth://totp/{issuer}:{account}?secret={secret_base32}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}")
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 rows (8 digits there; 6 here are the same value modulo 10^6).
    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (time, eight_digits) in [
            (59i64, 94_287_082u32),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ] {
            assert_eq!(hotp(secret, step_at(time) as u64), eight_digits % 1_000_000, "at {time}");
        }
    }

    #[test]
    fn base32_matches_rfc_4648_without_padding() {
        for (input, expected) in
            [("", ""), ("f", "MY"), ("fo", "MZXQ"), ("foo", "MZXW6"), ("foob", "MZXW6YQ"), ("fooba", "MZXW6YTB"), ("foobar", "MZXW6YTBOI")]
        {
            assert_eq!(base32(input.as_bytes()), expected);
        }
    }

    #[test]
    fn a_code_is_accepted_one_step_either_side_and_no_further() {
        let secret = b"12345678901234567890";
        let now = 1_234_567_890;
        let code = |step: i64| format!("{:06}", hotp(secret, step as u64));
        let here = step_at(now);
        assert_eq!(matching_step(secret, &code(here), now), Some(here));
        assert_eq!(matching_step(secret, &code(here - 1), now), Some(here - 1));
        assert_eq!(matching_step(secret, &code(here + 1), now), Some(here + 1));
        assert_eq!(matching_step(secret, &code(here - 2), now), None);
        assert_eq!(matching_step(secret, &code(here + 2), now), None);
        assert_eq!(matching_step(secret, "12345", now), None);
        assert_eq!(matching_step(secret, "abcdef", now), None);
    }

    #[test]
    fn the_uri_spells_out_every_parameter_and_encodes_the_label() {
        let uri = otpauth_uri("Trading Bot", "a+b@example.com", "MZXW6YTBOI");
        assert_eq!(
            uri,
            "otpauth://totp/Trading%20Bot:a%2Bb%40example.com?secret=MZXW6YTBOI&issuer=Trading%20Bot&algorithm=SHA1&digits=6&period=30"
        );
    }
}
