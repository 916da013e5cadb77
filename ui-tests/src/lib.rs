//! Compile tests for Floxide macros; see `tests/`.
