//! Serves the Bitget double on a loopback port, with the test keys of `doubles::bitget`, for the
//! ccxt check in `make test` and for trying live mode locally. `bitget-double --port 8787`.

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let mut port = 0u16;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next()) {
            ("--port", Some(p)) => port = p.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let double = doubles::bitget::FakeBitget::serve(port).await;
    println!("bitget double listening on {}", double.url);
    let _ = tokio::signal::ctrl_c().await;
}

fn usage() -> ! {
    eprintln!("usage: bitget-double [--port PORT]");
    std::process::exit(2)
}
