"""MCP tools for AI assistants over paperchart's services (issue 9); nothing is exposed yet."""
