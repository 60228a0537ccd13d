//! The money half: keeping each user's inbound transfers inside the bank's daily depository limit. The
//! fintech's registry (destinations, limits, card flags, blocks), the mirror of Astra's transfers, the
//! per-(destination, bank day) counters it moves, and the guard that answers from them.

pub mod counters;
pub mod guard;
pub mod mirror;
pub mod registry;
