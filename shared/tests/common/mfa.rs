//! Two-factor for the tests that need it: an independent authenticator (totp-rs), turning TOTP
//! on, and signing in with a code.

use super::*;
use serde_json::{json, Value};
use shared::handlers::auth;

/// The claims of an access token, read without checking it (the tests check it by using it).
pub fn claims(access_token: &str) -> Value {
    use base64::Engine;
    let payload = access_token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// An authenticator app, as an independent implementation (totp-rs) reads our setup answer.
pub struct Authenticator(pub totp_rs::TOTP);

impl Authenticator {
    pub fn from_setup(setup: &Value) -> Self {
        let totp = totp_rs::TOTP::from_url_unchecked(setup["otpauth_uri"].as_str().unwrap()).expect("an otpauth URI apps read");
        let secret = totp_rs::Secret::Encoded(setup["secret"].as_str().unwrap().to_owned()).to_bytes().unwrap();
        assert_eq!(totp.secret, secret, "the URI carries the secret the answer shows");
        Authenticator(totp)
    }
    /// The code of now.
    pub fn now(&self) -> String {
        self.0.generate_current().unwrap()
    }
    /// The code of the next step (accepted: clocks drift), for a second code inside one step.
    pub fn next(&self) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        self.0.generate(now + 30)
    }
    pub fn previous_of_previous(&self) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        self.0.generate(now - 60)
    }
}

pub async fn setup_totp(app: &TestApp, token: &str) -> TestResponse {
    app.call_as(auth::totp_setup, token, "POST", "/api/v1/auth/mfa/totp/setup", None).await
}

pub async fn enable_totp(app: &TestApp, token: &str, code: &str) -> TestResponse {
    app.call_as(auth::totp_enable, token, "POST", "/api/v1/auth/mfa/totp/enable", Some(json!({"code": code}))).await
}

pub async fn disable_totp(app: &TestApp, token: &str, password: &str, code: &str) -> TestResponse {
    let body = json!({"password": password, "code": code});
    app.call_as(auth::totp_disable, token, "POST", "/api/v1/auth/mfa/totp/disable", Some(body)).await
}

pub async fn mfa_verify(app: &TestApp, mfa_token: &str, code: &str) -> TestResponse {
    app.call(auth::mfa_verify, request("POST", "/api/v1/auth/mfa/verify", Some(json!({"mfa_token": mfa_token, "code": code})))).await
}

/// Sets two-factor up and on for the holder of `token`: their authenticator and recovery codes.
pub async fn turn_on_two_factor(app: &TestApp, token: &str) -> (Authenticator, Vec<String>) {
    let setup = setup_totp(app, token).await;
    assert_eq!(setup.status, 200, "{}", setup.raw);
    let app_ = Authenticator::from_setup(&setup.body);
    let res = enable_totp(app, token, &app_.now()).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    let codes: Vec<String> = res.body["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    (app_, codes)
}

/// Password then second factor: the token pair.
pub async fn sign_in_with_code(app: &TestApp, email: &str, code: &str) -> TestResponse {
    let res = app.call(auth::login, request("POST", "/api/v1/auth/login", Some(json!({"email": email, "password": PASSWORD})))).await;
    assert_eq!(res.status, 200, "{}", res.raw);
    assert_eq!(res.body["mfa_required"], true, "{}", res.raw);
    mfa_verify(app, res.body["mfa_token"].as_str().unwrap(), code).await
}
