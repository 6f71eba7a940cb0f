"""MCP tools for clinical assistants: thin adapters over paperchart's services, under SMART scopes."""

from mcp_tools.server import TOOL_ACCESS, CallerSource, build_mcp_server

__all__ = ["TOOL_ACCESS", "CallerSource", "build_mcp_server"]
