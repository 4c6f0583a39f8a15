//! All integration tests, in one binary: the runtime with real components, the HTTP API of a
//! real server, and crash recovery of the real binary.

mod agent_stats;
mod analysis;
mod api;
mod auth;
mod builds;
mod cache;
mod cluster;
mod cluster_plugins;
mod cluster_runners;
mod compat_agent_tracker;
mod compat_build_analysis;
mod compat_gitlab_crawler;
mod compat_runnerhub;
mod compat_teamcache;
mod contract;
mod crash;
mod github;
mod gitlab;
mod hardening;
mod harness;
mod matrix;
mod postgres;
mod retention;
mod runner_binary;
mod runners;
mod runtime;
mod store_failure;
mod streams;
mod task_metadata;
mod tenancy;
