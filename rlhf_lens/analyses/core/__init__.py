"""The plumbing every analysis shares: Result, Verdict, the registry and the cache."""
