//! Repository upkeep commands: `check` now; `forget` and `prune` later.

pub mod check;
