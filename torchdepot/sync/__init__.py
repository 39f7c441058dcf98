"""A mirror run, step by step: plan -> resolve -> fetch -> publish -> check (pip and conda)."""
