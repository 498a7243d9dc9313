"""Answer generation over retrieved passages."""
