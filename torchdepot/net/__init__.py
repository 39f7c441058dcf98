"""The network edge: one HTTP client, the user's pip configuration, the host policy and the resolver's guard proxy."""
