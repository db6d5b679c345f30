//! JSON logs through `tracing`, one line per event, with the span fields (the request id) on each.

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const DEFAULT_FILTER: &str = "info,aws_smithy_runtime=warn";

/// `RUST_LOG` as a list of `target=level` and a bare default level: the syntax every function is
/// configured with. Targets, not `EnvFilter`, because `EnvFilter` links a regex engine (about a
/// mebibyte in every binary) for span-field matching none of them uses.
pub fn filter(rust_log: Option<&str>) -> Targets {
    rust_log.and_then(|v| v.parse().ok()).unwrap_or_else(|| DEFAULT_FILTER.parse().unwrap_or_default())
}

pub fn init() {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let format = tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(false).with_target(false).without_time(); // CloudWatch stamps every line itself
    let _ = tracing_subscriber::registry().with(format).with(filter).try_init();
    // The Lambda binaries abort on a panic (Cargo.toml's release profile): the one trace of it is
    // this line, logged inside the request's span so it carries the request id. Where and what,
    // never a backtrace of values.
    std::panic::set_hook(Box::new(|info| {
        let what = info.payload().downcast_ref::<&str>().copied().or_else(|| info.payload().downcast_ref::<String>().map(String::as_str));
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        tracing::error!(panic = what.unwrap_or("(not a string)"), at, "panicked: the execution environment ends");
    }));
}
