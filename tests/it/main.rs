//! The integration tests: one binary, shared helpers, each store test run on SQLite and PostgreSQL.

mod astra;
mod binary;
mod cli_money;
mod cli_tokens;
mod crashes;
mod db_faults;
mod exchange;
mod fuzz;
mod grant_safety;
mod guard;
mod helpers;
mod hostile;
mod layout;
mod ledger;
mod money;
mod ops;
mod outbox;
mod plans;
mod retention;
mod secrets_sweep;
mod serve;
mod serve_processes;
mod spec;
mod storm;
mod tokens;
mod turns;
