//! astra-worker keeps a fintech's Astra integration healthy while nobody watches: it rotates OAuth grants
//! before they die, prompts users whose grant died, guards routine requests against bank limits, and follows
//! transfers Astra debited but could not credit. Every job runs through one runner and one slot ledger.
//!
//! The floor plan, bottom to top (a module imports only from the ones above it in this list):
//! - leaves: [`failure`] (exit statuses), [`secrets`], [`shutdown`], [`telemetry`], [`domain`] (cents, bank
//!   days, schedules, time);
//! - [`config`] (`jobs.toml`), [`store`] (the database handle and the slot ledger);
//! - [`astra`] (the client, its transport, limiter and records), [`outbox`] (messages to the fintech);
//! - [`tokens`], the first half: keeping grants alive (import, access, refresh, keys, episodes);
//! - [`reconcile`], the second half: keeping money inside the bank's limits (registry, mirror, counters,
//!   guard);
//! - [`exit`] (errors into exit codes), [`app`] (the process: settings, store, limiter, services);
//! - [`jobs`] (one file per job and their run context), [`runner`] (slots, claims, heartbeat, grace),
//!   [`inbox`] (Astra's webhooks in: signature, inbox, processing);
//! - [`ops`] (daemon, health, metrics, rendering), [`serve`] (the HTTP service), [`sandbox`] (the Astra
//!   simulator), [`demo`], [`cli`].

pub mod app;
pub mod astra;
pub mod cli;
pub mod config;
pub(crate) mod demo;
pub mod domain;
pub mod exit;
pub mod failure;
pub mod inbox;
pub(crate) mod jobs;
pub(crate) mod ops;
pub mod outbox;
pub mod reconcile;
pub mod runner;
pub mod sandbox;
pub mod secrets;
pub mod serve;
pub mod shutdown;
pub mod store;
pub(crate) mod telemetry;
pub mod tokens;
