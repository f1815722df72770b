"""Demo data written by the project: a hand-typed catalogue and synthetic ratings."""
