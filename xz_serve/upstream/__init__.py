"""OpenAI-compatible chat-completions upstreams: pooled HTTP, retries, circuit breakers, usage."""
