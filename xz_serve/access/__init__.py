"""Who may call and how much: API keys, scopes, per-key rate limits (the HTTP layer runs the gate)."""
