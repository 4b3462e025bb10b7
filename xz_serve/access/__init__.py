"""Who may call and how much: API keys, per-key rate limits, deadlines and admission (issue 5)."""
