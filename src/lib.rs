//! Session Queue: a Raft-replicated task queue for AI inference tasks.
//!
//! Layers, each using only those below it:
//! - [`node`]: wiring, startup and graceful shutdown of one node ([`config`], [`shutdown`]);
//!   - [`api`]: the public HTTP API;
//!   - [`peer`]: the node-to-node channel's server;
//!   - [`raft`]: openraft types, network client, group commit, linearizable reads;
//!     - [`store`]: RocksDB log store, state-machine store, snapshots;
//!       - [`machine`]: the task state machine, pure and deterministic.
//! - [`allocator`]: what the memory allocator (mimalloc) holds, for `/metrics`.
//! - [`descriptors`]: the file-descriptor budget (RocksDB, peers, API connections).
//! - [`huge_pages`]: transparent huge pages off for the process (the allocator's
//!   fresh memory is then zeroed 4 KiB at a time, not 2 MiB).
//! - [`cpu`]: the instruction sets the build uses (hardware CRC32C for RocksDB),
//!   checked at start.
//! - [`recorder`]: the Prometheus recorder behind `/metrics`, and its upkeep.
//! - [`codec`]: every binary encoding (used by store and the peer channel).
//! - [`client`]: the HTTP client behind the command-line tools, simulated miners and
//!   the load generator ([`bench`]).
//! - [`tls`]: rustls configurations of the listeners and clients, and a throwaway CA.

pub mod allocator;
pub mod api;
pub mod bench;
pub mod client;
pub mod codec;
pub mod config;
pub mod cpu;
pub mod descriptors;
pub mod huge_pages;
pub mod listener;
pub mod machine;
pub mod node;
pub mod peer;
pub mod raft;
pub mod recorder;
pub mod shutdown;
pub mod store;
pub mod tls;
