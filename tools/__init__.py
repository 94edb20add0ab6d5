"""Tools the model may call while answering: built-in ones (time, web fetch, web search) and MCP servers'."""
