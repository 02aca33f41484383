//! planning (to be written)
