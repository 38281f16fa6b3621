//! Empty library target: lets `tracer` name this crate as a build-dependency, so that cargo
//! rebuilds the daemon (which embeds the eBPF object) when the programs change.
#![no_std]
