//! Token sign/verify and Argon2id hash/verify, with no servers involved.

use criterion::{criterion_group, criterion_main, Criterion};
use shared::auth::password;
use shared::auth::tokens::{generate_key_entry, parse_jwt_keys, AccessClaims};

fn tokens(c: &mut Criterion) {
    let secret = serde_json::json!({"keys": [generate_key_entry("bench", chrono::Utc::now())]}).to_string();
    let keys = parse_jwt_keys(&secret, false).unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = AccessClaims {
        iss: "https://issuer".into(),
        aud: "api".into(),
        sub: "user-1".into(),
        exp: now + 900,
        iat: now,
        jti: uuid::Uuid::now_v7().to_string(),
        sid: None,
        amr: vec!["pwd".into()],
        roles: Vec::new(),
    };
    let token = keys.sign(&claims, std::time::Duration::ZERO).unwrap();
    c.bench_function("access token sign (EdDSA)", |b| b.iter(|| keys.sign(&claims, std::time::Duration::ZERO).unwrap()));
    c.bench_function("access token verify (EdDSA)", |b| b.iter(|| keys.verify(&token, "https://issuer", "api").unwrap()));
}

fn argon2(c: &mut Criterion) {
    let mut group = c.benchmark_group("argon2id m=19456 t=2 p=1");
    group.sample_size(20);
    let phc = password::hash_blocking("correct horse battery staple").unwrap();
    group.bench_function("hash", |b| b.iter(|| password::hash_blocking("correct horse battery staple").unwrap()));
    group.bench_function("verify", |b| b.iter(|| assert!(password::verify_blocking("correct horse battery staple", &phc).ok)));
    // The argon2 crate's own verify (its working memory allocated and filled afresh each time).
    group.bench_function("verify (argon2 crate's own)", |b| {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        b.iter(|| assert!(password::argon2().verify_password(b"correct horse battery staple", &PasswordHash::new(&phc).unwrap()).is_ok()))
    });
    // On a fresh thread each time, as a sign-in's blocking task may be.
    group.bench_function("verify on a new thread", |b| {
        b.iter(|| {
            std::thread::scope(|s| s.spawn(|| assert!(password::verify_blocking("correct horse battery staple", &phc).ok)).join().unwrap())
        })
    });
    group.bench_function("verify (argon2 crate's own) on a new thread", |b| {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        b.iter(|| {
            std::thread::scope(|s| {
                s.spawn(|| {
                    let parsed = PasswordHash::new(&phc).unwrap();
                    assert!(password::argon2().verify_password(b"correct horse battery staple", &parsed).is_ok())
                })
                .join()
                .unwrap()
            })
        })
    });
    group.finish();
}

/// What a second-factor check computes: the TOTP codes of three steps (now and one either side),
/// compared in constant time.
fn totp(c: &mut Criterion) {
    use shared::auth::totp;
    let secret = totp::new_secret();
    let now = chrono::Utc::now().timestamp();
    let code = format!("{:06}", totp::hotp(secret.expose(), totp::step_at(now) as u64));
    c.bench_function("TOTP check (RFC 6238, 3 steps)", |b| b.iter(|| assert!(totp::matching_step(secret.expose(), &code, now).is_some())));
    c.bench_function("TOTP check, wrong code (3 steps)", |b| b.iter(|| totp::matching_step(secret.expose(), "000000", now)));
}

criterion_group!(benches, tokens, argon2, totp);
criterion_main!(benches);
