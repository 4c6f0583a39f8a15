//! Host implementations of the WIT imports, one file per interface.
//!
//! Every function returns `Ok(Err(HostError))` for anything the guest did or was not allowed
//! to do; the outer `Err` (a trap) is reserved for the runtime's own interrupts.

mod control;
mod http;
mod kv;
mod reporting;
mod runners;
mod tasks;

pub(crate) use http::HttpClient;

use super::bindings::taskhost::plugin::types;
use super::state::HostState;

impl types::Host for HostState {}
