//! The `kith` command: a thin CLI over the daemon's control API, plus `kith demo` and the benchmark
//! driver. The binary (`main.rs`) only parses arguments and maps errors to exit codes.
#![forbid(unsafe_code)]

pub mod bench;
pub mod bench_calls;
pub mod bench_discovery;
pub mod bench_gateway;
pub mod bench_mailbox;
pub mod bench_setup;
pub mod cli;
pub mod client;
pub mod demo;
pub mod demo_org;
pub mod process;
pub mod relay;
pub mod sip_peers;
pub mod speech;
pub mod text;

/// `println!` for a command whose reader may go away: `kith chat bob | head` closes the pipe after ten
/// lines, and `println!` would then panic. A closed standard output ends the command quietly, with status
/// 0, as `ls | head` does; any other failure to write is reported and ends it with status 1.
#[macro_export]
macro_rules! say {
    () => { $crate::say!("") };
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, $($arg)*).and_then(|()| out.flush()) {
            $crate::stdout_failed(e);
        }
    }};
}

/// Standard output cannot be written: a closed pipe ends the process quietly, anything else with a word.
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("kith: cannot write to standard output: {e}");
    std::process::exit(1);
}
/// The local Mainline testnet lives in the DHT layer; re-exported for the CLI, demo and tests.
pub use kith_net::testnet;
