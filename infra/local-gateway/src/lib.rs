//! The stack's AWS edge on this machine, without Docker: API Gateway's HTTP API (payload
//! format 2.0, JWT authorizer) and Lambda's SQS event source mapping, in front of the very
//! handler structs the Lambdas run. What it serves comes from `STATE/gateway.json`, which
//! `infra/stack.py up` derives from template.yaml.
//!
//! All functions run in this one process and share one set of clients, built from
//! `STATE/stack.env`; the functions' environments are merged there.

pub mod config;
pub mod event;
pub mod event_source;
pub mod functions;
pub mod jwt;
pub mod routes;
pub mod sale;
pub mod server;
