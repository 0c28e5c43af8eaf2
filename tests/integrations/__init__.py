"""Framework integrations, each tested in a real minimal app (issue 7 §5)."""
