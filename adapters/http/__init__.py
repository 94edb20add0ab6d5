"""v2's HTTP API (`[http]`): programs written for chatgpt-mirai-qq-bot v2 chat with the bot over HTTP."""
