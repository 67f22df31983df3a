//! The maintainers' sandbox policy.
//!
//! This crate will own the policy model and its TOML file format: `dev` or
//! `official` mode, which hook points may be replaced and by which transport
//! (native, wasm), each hook's op allow-list, the wasm resource limits, and the
//! native-plugin allow-list (name, version, SHA-256, approved hooks, approver).
//! It owns no enforcement: the host loads a policy and enforces it.
//!
//! Status: empty; the policy issue fills it.
