//! The mock hub (to be written).
