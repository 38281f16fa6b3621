//! kafka-tracer: traces Apache Kafka traffic from the kernel with eBPF.
//!
//! One module per pipeline stage, data flowing one way:
//! `capture` (kernel programs, ring buffer) -> `reassembly` (byte streams) -> `kafka` (frames,
//! wire decoding, request/response pairing) -> `correlate` (trace identity) -> `spans` ->
//! `export` (sampling, queue, sinks), with `metrics` beside the spans; `pipeline` runs the
//! userspace stages up to decoding per connection, `counters` describes every counter once,
//! and `daemon` drives it all for the `kafka-tracer` binary.

pub mod btf;
pub mod capture;
pub mod cli;
pub mod correlate;
pub mod counters;
pub mod daemon;
pub mod export;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod reassembly;
pub mod spans;
