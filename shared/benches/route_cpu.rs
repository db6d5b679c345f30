//! Each route's own CPU time per request: the process's CPU (every thread's, Argon2's blocking
//! pool included) across one request served in-process against the local stack, whose servers
//! are other processes. 1,000 requests a route (N), p50 and p99, next to a bare Argon2id verify
//! with the parameters the stored hashes carry. Writes `.local/bench/cpu.tsv` for
//! `bench/results.sh`. Run by `make bench` (`cargo bench --bench route_cpu`).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use serde_json::json;
use shared::handlers::{auth, health, live, trading};
use std::future::Future;

/// This process's CPU time so far, in nanoseconds: every thread's, exited ones' included, to the
/// nanosecond (the kernel brings the running thread's count up to date when asked, where
/// /proc's per-thread figures lag to the last tick).
fn process_cpu_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through the pointer it is given, which is valid.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "CLOCK_PROCESS_CPUTIME_ID is readable");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

struct Samples {
    rows: Vec<String>,
    /// What reading the clock costs, taken off every sample.
    overhead_ns: u64,
    /// `ROUTES`: only routes whose name holds one of these comma-separated parts are measured
    /// (to profile one route under `perf`); every route when unset. A selection changes the
    /// workload: without the submit route the lists and PnL read no orders, and verify alone
    /// still runs register's hashing (off the record, but in the profile).
    only: Vec<String>,
}

impl Samples {
    fn new() -> Self {
        let mut reads: Vec<u64> = (0..200).map(|_| (process_cpu_ns(), process_cpu_ns())).map(|(a, b)| b.saturating_sub(a)).collect();
        reads.sort_unstable();
        let only =
            std::env::var("ROUTES").unwrap_or_default().split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect();
        Samples { rows: Vec::new(), overhead_ns: reads[reads.len() / 2], only }
    }

    fn wants(&self, route: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|part| route.contains(part.as_str()))
    }

    /// Measures `route` with `run` when `ROUTES` selects it.
    fn take(&mut self, route: &str, run: impl FnOnce() -> Vec<u64>) {
        if self.wants(route) {
            let ns = run();
            self.add(route, ns);
        }
    }

    fn add(&mut self, route: &str, mut ns: Vec<u64>) {
        ns.iter_mut().for_each(|v| *v = v.saturating_sub(self.overhead_ns));
        ns.sort_unstable();
        let at = |q: f64| ns[((ns.len() as f64 * q).ceil() as usize).clamp(1, ns.len()) - 1] as f64 / 1000.0;
        let row = format!("{route}\t{}\t{:.0}\t{:.0}", ns.len(), at(0.50), at(0.99));
        eprintln!("{row}");
        self.rows.push(row);
    }
}

/// The CPU each of `n` requests took; `make` builds request `i`.
fn measure<F, Fut>(rt: &tokio::runtime::Runtime, n: usize, mut make: F) -> Vec<u64>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    (0..n)
        .map(|i| {
            let request = make(i);
            let before = process_cpu_ns();
            rt.block_on(request);
            process_cpu_ns() - before
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    // One thread: the handler, the SDK's connections and the Redis driver all run on it.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let app = rt.block_on(spawn_app_with(&[("IP_RATE_LIMIT_PER_MINUTE", "100000000".into())]));
    let app = &app;
    rt.block_on(app.set_mark("BTCUSDT", "65000"));
    let user = rt.block_on(sign_up(app));
    let token = user.access.clone();
    let start = json!({"symbol": "BTCUSDT", "leverage": 10, "stop_loss_pct": "5", "max_position_notional": "100000000"});
    assert_eq!(rt.block_on(app.call_as(trading::start_bot, &token, "POST", "/api/v1/bot/start", Some(start.clone()))).status, 200);
    let mut samples = Samples::new();
    let ok = |status: u16, expected: &[u16], raw: &str| assert!(expected.contains(&status), "{status}: {raw}");

    samples.take("GET /api/v1/health", || {
        measure(&rt, n, |_| async { ok(app.call(health::handle, request("GET", "/api/v1/health", None)).await.status, &[200], "") })
    });
    samples.take("GET /.well-known/jwks.json", || {
        measure(&rt, n, |_| async { ok(app.call(auth::jwks, request("GET", "/.well-known/jwks.json", None)).await.status, &[200], "") })
    });
    let get = |handler_path: &'static str| handler_path;
    for (route, path) in [("GET /api/v1/users/me", get("/api/v1/users/me")), ("GET /api/v1/auth/sessions", "/api/v1/auth/sessions")] {
        let token = token.clone();
        samples.take(route, || {
            measure(&rt, n, |_| {
                let token = token.clone();
                async move {
                    let res = match path {
                        "/api/v1/users/me" => app.call_as(auth::me, &token, "GET", path, None).await,
                        _ => app.call_as(auth::list_sessions, &token, "GET", path, None).await,
                    };
                    ok(res.status, &[200], &res.raw)
                }
            })
        });
    }
    let emails: Vec<String> = (0..n).map(|i| format!("cpu-{i}-{}@example.com", uuid::Uuid::new_v4().simple())).collect();
    let register_all = || {
        measure(&rt, n, |i| {
            let body = json!({"email": emails[i], "password": PASSWORD});
            async move { ok(app.call(auth::register, request("POST", "/api/v1/auth/register", Some(body))).await.status, &[202], "") }
        })
    };
    // Verify spends the codes register mailed: they register, off the record, when only verify
    // is measured.
    match samples.wants("POST /api/v1/auth/verify") && !samples.wants("POST /api/v1/auth/register") {
        true => drop(register_all()),
        false => samples.take("POST /api/v1/auth/register", register_all),
    }
    let outbox = app.outbox();
    let code_of = |email: &str| {
        outbox.iter().rev().find(|m| m["to"] == email && m["code"].is_string()).expect("a code")["code"].as_str().expect("code").to_owned()
    };
    samples.take("POST /api/v1/auth/verify", || {
        let codes: Vec<String> = emails.iter().map(|e| code_of(e)).collect();
        measure(&rt, n, |i| {
            let body = json!({"email": emails[i], "verification_code": codes[i]});
            async move {
                let res = app.call(auth::verify, request("POST", "/api/v1/auth/verify", Some(body))).await;
                ok(res.status, &[200], &res.raw)
            }
        })
    });
    samples.take("POST /api/v1/auth/resend", || {
        measure(&rt, n, |i| {
            let body = json!({"email": format!("nobody-{i}@example.com")});
            async move { ok(app.call(auth::resend, request("POST", "/api/v1/auth/resend", Some(body))).await.status, &[202], "") }
        })
    });
    samples.take("POST /api/v1/auth/password/forgot", || {
        measure(&rt, n, |i| {
            let body = json!({"email": format!("nobody-{i}@example.com")});
            async move {
                ok(app.call(auth::forgot_password, request("POST", "/api/v1/auth/password/forgot", Some(body))).await.status, &[202], "")
            }
        })
    });
    let login_body = json!({"email": user.email, "password": PASSWORD});
    samples.take("POST /api/v1/auth/login", || {
        measure(&rt, n, |_| {
            let body = login_body.clone();
            async move {
                let res = app.call(auth::login, request("POST", "/api/v1/auth/login", Some(body))).await;
                ok(res.status, &[200], &res.raw)
            }
        })
    });
    // The bare verify: the hash the login record holds, checked by the argon2 crate itself.
    let phc = rt.block_on(shared::auth::password::hash(PASSWORD.to_owned())).expect("hash");
    samples.take("bare Argon2id verify", || {
        (0..n)
            .map(|_| {
                use argon2::PasswordVerifier;
                let before = process_cpu_ns();
                let parsed = argon2::PasswordHash::new(&phc).expect("phc");
                assert!(argon2::Argon2::default().verify_password(PASSWORD.as_bytes(), &parsed).is_ok());
                process_cpu_ns() - before
            })
            .collect()
    });
    let authed: [(&str, &str); 8] = [
        ("GET /api/v1/bot/status", "/api/v1/bot/status"),
        ("GET /api/v1/account", "/api/v1/account"),
        ("GET /api/v1/orders", "/api/v1/orders"),
        ("GET /api/v1/fills", "/api/v1/fills"),
        ("GET /api/v1/pnl", "/api/v1/pnl"),
        ("GET /api/v1/markets", "/api/v1/markets"),
        ("GET /api/v1/notifications", "/api/v1/notifications"),
        ("POST /api/v1/bot/signal-token", "/api/v1/bot/signal-token"),
    ];
    // A few orders first, so the lists and the PnL have rows to read.
    let order = |key: String, side: &'static str| {
        let mut req = with_bearer(
            request("POST", "/api/v1/order/submit", Some(json!({"symbol": "BTCUSDT", "side": side, "type": "market", "size": "0.001"}))),
            &token,
        );
        req.headers_mut().insert("idempotency-key", key.parse().expect("key"));
        req
    };
    samples.take("POST /api/v1/order/submit (paper)", || {
        measure(&rt, n, |i| {
            let req = order(uuid::Uuid::new_v4().to_string(), if i % 2 == 0 { "buy" } else { "sell" });
            async move {
                let res = app.call(trading::submit_order, req).await;
                ok(res.status, &[201], &res.raw)
            }
        })
    });
    for (route, path) in authed {
        let token = token.clone();
        samples.take(route, || {
            measure(&rt, n, |_| {
                let token = token.clone();
                async move {
                    let res = match path {
                        "/api/v1/bot/status" => app.call_as(trading::status, &token, "GET", path, None).await,
                        "/api/v1/account" => app.call_as(trading::account, &token, "GET", path, None).await,
                        "/api/v1/orders" => app.call_as(trading::list_orders, &token, "GET", path, None).await,
                        "/api/v1/fills" => app.call_as(trading::list_fills, &token, "GET", path, None).await,
                        "/api/v1/pnl" => app.call_as(trading::pnl, &token, "GET", path, None).await,
                        "/api/v1/markets" => app.call_as(trading::markets, &token, "GET", path, None).await,
                        "/api/v1/notifications" => app.call_as(live::get_notifications, &token, "GET", path, None).await,
                        _ => app.call_as(trading::signal_token, &token, "POST", path, None).await,
                    };
                    ok(res.status, &[200, 201], &res.raw)
                }
            })
        });
    }
    // Routes that use up what they act on: each request's subject is made just before it, off
    // the clock (`make` runs before the measurement starts).
    let submit_now = |body: serde_json::Value| {
        let mut req = with_bearer(request("POST", "/api/v1/order/submit", Some(body)), &token);
        req.headers_mut().insert("idempotency-key", uuid::Uuid::new_v4().to_string().parse().expect("key"));
        let res = rt.block_on(app.call(trading::submit_order, req));
        ok(res.status, &[201], &res.raw);
        res.body
    };
    let market_buy = json!({"symbol": "BTCUSDT", "side": "buy", "type": "market", "size": "0.001"});
    let resting_buy = json!({"symbol": "BTCUSDT", "side": "buy", "type": "limit", "size": "0.001", "price": "64000"});
    let first = submit_now(market_buy.clone());
    let order_path = format!("/api/v1/orders/{}", first["order_id"].as_str().expect("order id"));
    samples.take("GET /api/v1/orders/{order_id}", || {
        measure(&rt, n, |_| async {
            let res = app.call_as(trading::get_order, &token, "GET", &order_path, None).await;
            ok(res.status, &[200], &res.raw)
        })
    });
    samples.take("DELETE /api/v1/orders/{order_id}", || {
        measure(&rt, n, |_| {
            let path = format!("/api/v1/orders/{}", submit_now(resting_buy.clone())["order_id"].as_str().expect("order id"));
            let token = token.clone();
            async move {
                let res = app.call_as(trading::cancel_order, &token, "DELETE", &path, None).await;
                ok(res.status, &[200], &res.raw)
            }
        })
    });
    samples.take("POST /api/v1/positions/{symbol}/close", || {
        measure(&rt, n, |_| {
            submit_now(market_buy.clone());
            let token = token.clone();
            async move {
                let res = app.call_as(trading::close_position, &token, "POST", "/api/v1/positions/BTCUSDT/close", None).await;
                ok(res.status, &[200], &res.raw)
            }
        })
    });
    let bot_call = |stop: bool| {
        let (token, config) = (token.clone(), start.clone());
        async move {
            let res = match stop {
                true => app.call_as(trading::stop_bot, &token, "POST", "/api/v1/bot/stop", None).await,
                false => app.call_as(trading::start_bot, &token, "POST", "/api/v1/bot/start", Some(config)).await,
            };
            ok(res.status, &[200], &res.raw)
        }
    };
    samples.take("POST /api/v1/bot/stop", || {
        measure(&rt, n, |_| {
            rt.block_on(bot_call(false));
            bot_call(true)
        })
    });
    samples.take("POST /api/v1/bot/start", || {
        measure(&rt, n, |_| {
            rt.block_on(bot_call(true));
            bot_call(false)
        })
    });
    samples.take("POST /api/v1/auth/logout", || {
        measure(&rt, n, |_| {
            let res = rt.block_on(app.call(auth::login, request("POST", "/api/v1/auth/login", Some(login_body.clone()))));
            ok(res.status, &[200], &res.raw);
            let body = json!({"refresh_token": res.body["refresh_token"].as_str().expect("refresh token")});
            async move {
                let res = app.call(auth::logout, request("POST", "/api/v1/auth/logout", Some(body))).await;
                ok(res.status, &[200, 204], &res.raw)
            }
        })
    });
    // Last: each rotation adds to the token family's items, and DynamoDB Local slows down as a
    // table grows (it costs wall time only, not this process's CPU).
    let refresh = std::cell::RefCell::new(user.refresh.clone());
    samples.take("POST /api/v1/auth/refresh", || {
        measure(&rt, n, |_| {
            let current = refresh.borrow().clone();
            let refresh = &refresh;
            async move {
                let res = app.call(auth::refresh, request("POST", "/api/v1/auth/refresh", Some(json!({"refresh_token": current})))).await;
                ok(res.status, &[200], &res.raw);
                *refresh.borrow_mut() = res.body["refresh_token"].as_str().expect("token").to_owned();
            }
        })
    });
    // A selection is for profiling: bench/results.sh publishes cpu.tsv, which only a full run
    // may replace.
    if !samples.only.is_empty() {
        eprintln!("ROUTES is set: {} routes measured, .local/bench/cpu.tsv left as it was", samples.rows.len());
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/bench");
    std::fs::create_dir_all(&dir).expect("bench dir");
    // `CPU_TSV` names another file, for a run of another build profile to compare against.
    let name = std::env::var("CPU_TSV").unwrap_or_else(|_| "cpu.tsv".to_owned());
    std::fs::write(dir.join(&name), samples.rows.join("\n") + "\n").expect("cpu tsv");
}
