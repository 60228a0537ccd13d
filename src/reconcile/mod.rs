//! The money half: keeping each user's inbound transfers inside the bank's daily depository limit. The
//! fintech's registry (destinations, limits, card flags, blocks), the mirror of Astra's transfers, the
//! per-(destination, bank day) counters it moves, the holds the guard places, and the guard that answers from
//! them.

pub mod counters;
pub mod guard;
pub mod holds;
pub mod mirror;
pub mod registry;
