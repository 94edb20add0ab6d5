"""The web console (控制台) on the `[web]` server: status, conversations, presets, config, limits, logs, chat."""
