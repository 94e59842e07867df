//! The `kith` command: a thin CLI over the daemon's control API, plus `kith demo` and the benchmark
//! driver. The binary (`main.rs`) only parses arguments and maps errors to exit codes.
#![forbid(unsafe_code)]

pub mod bench;
pub mod bench_calls;
pub mod bench_discovery;
pub mod bench_mailbox;
pub mod cli;
pub mod client;
pub mod demo;
pub mod process;
pub mod relay;
/// The local Mainline testnet lives in the DHT layer; re-exported for the CLI, demo and tests.
pub use kith_net::testnet;
