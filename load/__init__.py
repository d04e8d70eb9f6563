"""hwbp-load: a bounded load generator that checks the arbiter's invariants from outside."""
