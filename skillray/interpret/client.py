"""Moved to :mod:`skillray.llm_client` (shared by interpret, safety and eval); this name stays for older imports."""

from skillray.llm_client import PLACEHOLDER_KEY, CallStats, ChatClient, EndpointError, ResponseCache, redact_text, redact_url

__all__ = ["PLACEHOLDER_KEY", "CallStats", "ChatClient", "EndpointError", "ResponseCache", "redact_text", "redact_url"]
