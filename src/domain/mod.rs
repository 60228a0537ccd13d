//! The worker's domain values, leaves that import nothing else of the crate but failures: money in integer
//! cents, bank days in a bank's zone, job schedules (cron and zone), time formats and durations.

pub mod bankday;
pub mod money;
pub mod schedule;
pub mod time;

pub use bankday::BankDay;
pub use money::Cents;
pub use schedule::Schedule;
