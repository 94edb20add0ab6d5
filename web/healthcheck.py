"""`python -m web.healthcheck`: exit 0 when the running bot's /healthz says every link is up (Docker, systemd).

Reads only `[web] host`/`port` from the config, with the standard library, so it starts fast.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_PORT = 8560
ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def address(config: Path) -> tuple[str, int]:
    """Where the bot's web server listens, per the config (defaults when the file or keys are missing)."""
    try:
        web = tomllib.loads(config.read_text(encoding="utf-8-sig")).get("web", {})
    except (OSError, ValueError):
        web = {}
    host = str(web.get("host", "127.0.0.1")) if isinstance(web, dict) else "127.0.0.1"
    port = web.get("port", DEFAULT_PORT) if isinstance(web, dict) else DEFAULT_PORT
    return ANY_ADDRESS.get(host, host), int(port) if isinstance(port, int) else DEFAULT_PORT


def main(argv: list[str] | None = None) -> int:
    """0 when healthy; 1 with the reason on stderr otherwise."""
    parser = argparse.ArgumentParser(description="检查机器人是否在线 / is the running bot healthy")
    parser.add_argument("--config", default="", help="config.toml (default: config.toml, else config.example.toml)")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    config = Path(args.config) if args.config else Path("config.toml")
    if not args.config and not config.is_file():
        config = Path("config.example.toml")
    host, port = address(config)
    url = f"http://[{host}]:{port}/healthz" if ":" in host else f"http://{host}:{port}/healthz"
    try:
        # No proxy: HTTP(S)_PROXY in the environment must not route a loopback check elsewhere.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=args.timeout) as response:
            response.read()
            return 0
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: {url} answered {exc.code}: {exc.read(500).decode('utf-8', 'replace')}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
