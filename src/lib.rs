//! astra-worker keeps a fintech's Astra integration healthy while nobody watches: it rotates OAuth grants
//! before they die, prompts users whose grant died, guards routine requests against bank limits, and follows
//! transfers Astra debited but could not credit. Every job runs through one runner and one slot ledger.

pub mod astra;
pub mod bankday;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod demo;
pub mod episodes;
pub mod exit;
pub mod guard;
pub mod health;
pub mod jobs;
pub mod limiter;
pub mod metrics;
pub mod mirror;
pub mod money;
pub mod outbox;
pub mod registry;
pub mod render;
pub mod runner;
pub mod sandbox;
pub mod schedule;
pub mod secrets;
pub mod services;
pub mod store;
pub mod telemetry;
pub mod tokens;
