"""Conversations: sessions, intent policy, escalation, LLM upstream and reply cache."""
