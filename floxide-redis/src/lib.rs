//! Redis backend for Floxide's distributed runtime.
//!
//! This crate is a placeholder: it holds no implementation yet. It will implement the
//! distributed store traits of `floxide-core` on Redis (leased takes, fenced Lua commits,
//! delayed retries, dead letters), so that worker processes on many machines can share one
//! Redis while keeping the guarantees of Floxide's distributed contract.
