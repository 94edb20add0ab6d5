"""Deployment files: Dockerfile, compose files and start scripts agree with config.example.toml.

No Docker engine or YAML library is needed: the files are read line by line.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.mirai.yml", "docker-compose.napcat.yml")
ONEBOT_PORT = 8566


def mirai_port() -> int:
    with (ROOT / "config.example.toml").open("rb") as f:
        return tomllib.load(f)["mirai"]["reverse_ws_port"]


def onebot_port() -> int:
    """The OneBot default is in a commented-out section, so read it from the comment."""
    text = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    section = text.split("# [onebot]", 1)[1].split("\n# [", 1)[0]
    match = re.search(r"^#\s*reverse_ws_port\s*=\s*(\d+)", section, re.M)
    assert match, "config.example.toml [onebot] reverse_ws_port"
    return int(match.group(1))


def dockerfile() -> list[str]:
    """Instructions with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    return [i.strip() for i in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines() if i.strip()]


def instructions(name: str) -> list[str]:
    return [i.split(None, 1)[1] if " " in i else "" for i in dockerfile() if i.split()[0].upper() == name]


def services(path: str) -> dict[str, list[str]]:
    """Service name -> its lines, for the top-level `services:` block (2-space indented names)."""
    found: dict[str, list[str]] = {}
    current = None
    in_services = False
    for line in (ROOT / path).read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            in_services = line.rstrip() == "services:"
            current = None
        elif in_services and re.match(r"^  [\w.-]+:\s*$", line):
            current = line.strip()[:-1]
            found[current] = []
        elif in_services and current:
            found[current].append(line)
    return found


def list_items(lines: list[str], key: str) -> list[str]:
    """Items of a block list `key:` inside one service."""
    items: list[str] = []
    inside = False
    for line in lines:
        if re.match(rf"^    {key}:\s*$", line):
            inside = True
        elif inside and re.match(r"^      - ", line):
            items.append(line.split("- ", 1)[1].split(" #")[0].strip().strip("\"'"))
        elif inside and re.match(r"^    \S", line):
            inside = False
    return items


def test_defaults_match_config_example():
    assert mirai_port() == 8554
    assert onebot_port() == ONEBOT_PORT


def test_dockerfile():
    assert instructions("FROM") == ["python:3.11-slim"]
    run = " ".join(instructions("RUN"))
    assert "fonts-wqy-microhei" in run and "--no-install-recommends" in run
    assert "rm -rf /var/lib/apt/lists" in run
    assert "pip install --no-cache-dir -r requirements.txt" in run
    steps = dockerfile()
    copy_reqs = next(n for n, i in enumerate(steps) if i.startswith("COPY requirements.txt"))
    pip = next(n for n, i in enumerate(steps) if "pip install" in i)
    copy_all = next(n for n, i in enumerate(steps) if i.startswith("COPY . "))
    assert copy_reqs < pip < copy_all
    users = instructions("USER")
    assert users and users[-1] not in ("root", "0")
    assert instructions("WORKDIR") == ["/app"]
    assert "PYTHONUNBUFFERED=1" in " ".join(instructions("ENV"))
    exposed = {int(p) for e in instructions("EXPOSE") for p in e.split()}
    assert exposed == {mirai_port(), onebot_port()}
    health = instructions("HEALTHCHECK")
    assert len(health) == 1 and '["python", "-m", "web.healthcheck"]' in health[0]
    assert json.loads(instructions("CMD")[-1]) == ["python", "bot.py"]
    entry = json.loads(instructions("ENTRYPOINT")[0])
    assert "/app/config.toml" in entry[2] and "config.example.toml" in entry[2]


def test_entrypoint_falls_back_to_the_example(tmp_path):
    entry = json.loads(instructions("ENTRYPOINT")[0])
    if not Path(entry[0]).exists() or Path("/app/config.toml").exists():
        pytest.skip("needs /bin/sh and no /app/config.toml")
    out = subprocess.run([*entry, "echo", "python", "bot.py"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0
    assert out.stdout.split() == ["python", "bot.py", "--config", "config.example.toml"]
    assert "config.toml" in out.stderr
    out = subprocess.run(
        [*entry, "echo", "python", "bot.py", "--config", "x.toml"], capture_output=True, text=True, timeout=10
    )
    assert out.stdout.split() == ["python", "bot.py", "--config", "x.toml"]


def test_dockerignore_keeps_secrets_out():
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {"config.toml", "data", ".git", ".venv"} <= set(ignored)
    assert "config.example.toml" not in ignored and "requirements.txt" not in ignored


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_bot_service(path):
    found = services(path)
    assert "chatgpt" in found, f"{path}: the bot service must be named chatgpt"
    bot = found["chatgpt"]
    assert "build: ." in [line.strip() for line in bot]
    volumes = list_items(bot, "volumes")
    assert any(v.startswith("./config.toml:/app/config.toml") for v in volumes)
    assert "./data:/app/data" in volumes
    assert any(line.strip() == "restart: unless-stopped" for line in bot)
    ports = {int(p.split(":")[-1]) for p in list_items(bot, "ports") + list_items(bot, "expose")}
    assert ports and ports <= {mirai_port(), onebot_port(), web_port()}
    # the web console is published on the host's loopback only
    assert f"127.0.0.1:{web_port()}:{web_port()}" in list_items(bot, "ports")
    assert not any(p.endswith(f":{web_port()}") and not p.startswith("127.0.0.1:") for p in list_items(bot, "ports"))


def web_port() -> int:
    with (ROOT / "config.example.toml").open("rb") as f:
        port: int = tomllib.load(f)["web"]["port"]
    return port


def test_compose_alone_publishes_the_mirai_port():
    ports = list_items(services("docker-compose.yml")["chatgpt"], "ports")
    assert f"{mirai_port()}:{mirai_port()}" in ports


def test_compose_mirai_dials_chatgpt():
    text = (ROOT / "docker-compose.mirai.yml").read_text(encoding="utf-8")
    assert "mirai" in services("docker-compose.mirai.yml")
    assert re.search(r"host:\s*chatgpt\b", text)
    assert re.search(rf"port:\s*{mirai_port()}\b", text)
    assert "[mirai]" in text and f"reverse_ws_port = {mirai_port()}" in text


def test_compose_napcat_dials_chatgpt():
    text = (ROOT / "docker-compose.napcat.yml").read_text(encoding="utf-8")
    napcat = services("docker-compose.napcat.yml")["napcat"]
    assert any("mlikiowa/napcat-docker" in line for line in napcat)
    assert f"ws://chatgpt:{onebot_port()}/" in text
    assert "[onebot]" in text and f"reverse_ws_port = {onebot_port()}" in text


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.mirai.yml", "docker-compose.napcat.yml"])
def test_every_compose_file_checks_health_through_healthz(name):
    service = "\n".join(services(name)["chatgpt"])
    assert "healthcheck:" in service and '["CMD", "python", "-m", "web.healthcheck"]' in service


def test_start_sh_syntax():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    subprocess.run([bash, "-n", str(ROOT / "start.sh")], check=True, timeout=30)
    text = (ROOT / "start.sh").read_text(encoding="utf-8")
    assert "set -euo pipefail" in text and "PIP_INDEX_URL" in text
    assert 'exec .venv/bin/python bot.py "$@"' in text
    assert b"\r" not in (ROOT / "start.sh").read_bytes()


def test_start_sh_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed")
    out = subprocess.run([shellcheck, str(ROOT / "start.sh")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout


def test_start_bat():
    data = (ROOT / "start.bat").read_bytes()
    assert data.count(b"\n") == data.count(b"\r\n") > 0, "start.bat needs CRLF line endings"
    assert not data.startswith(b"\xef\xbb\xbf"), "a BOM breaks the first line of a batch file"
    text = data.decode("utf-8").lower()
    for needle in ("chcp 65001", "set pip_index_url=", "pause", "notepad config.toml", "requirements.txt", "bot.py %*"):
        assert needle in text
    before_chcp = text.split("chcp 65001", 1)[0]
    assert before_chcp.isascii(), "lines before chcp 65001 must be ASCII"


def test_entrypoint_uses_a_mounted_v2_config_cfg(tmp_path):
    """v2's Docker users mounted /app/config.cfg: without config.toml it is used, with one loud line."""
    entry = json.loads(instructions("ENTRYPOINT")[0])
    if not Path(entry[0]).exists():
        pytest.skip("needs /bin/sh")
    # the same script, pointed at a temporary /app so the test needs no root
    script = entry[2].replace("/app/", f"{tmp_path}/")
    (tmp_path / "data").mkdir()
    (tmp_path / "config.cfg").write_text("[mirai]\nqq = 1\n", encoding="utf-8")
    run = [entry[0], entry[1], script, entry[3]]
    out = subprocess.run([*run, "echo", "python", "bot.py"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0
    assert out.stdout.split() == ["python", "bot.py", "--config", f"{tmp_path}/config.cfg"]
    assert len(out.stderr.splitlines()) == 1 and "config.cfg" in out.stderr and "!!!" in out.stderr
    out = subprocess.run([*run, "echo", "python", "bot.py", "--config", "x.toml"], capture_output=True, text=True)
    assert out.stdout.split() == ["python", "bot.py", "--config", "x.toml"]
    (tmp_path / "config.toml").write_text("", encoding="utf-8")
    out = subprocess.run([*run, "echo", "python", "bot.py"], capture_output=True, text=True, timeout=10)
    assert out.stdout.split() == ["python", "bot.py"] and out.stderr == ""


def test_compose_mirai_image_is_required_not_pulled():
    """No published official Mirai image exists: MIRAI_IMAGE must be set, with a bilingual message."""
    mirai = services("docker-compose.mirai.yml")["mirai"]
    [image] = [line.split(":", 1)[1].strip().strip("\"'") for line in mirai if line.strip().startswith("image:")]
    match = re.fullmatch(r"\$\{MIRAI_IMAGE:\?([^}]+)\}", image)
    assert match, f"image must be ${{MIRAI_IMAGE:?message}}, got {image}"
    message = match.group(1)
    assert re.search(r"[\u4e00-\u9fff]", message) and "set MIRAI_IMAGE" in message


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_images_are_published(path):
    """Every image is our own build, NapCat's documented image, or the required MIRAI_IMAGE."""
    for name, lines in services(path).items():
        for line in lines:
            if line.strip().startswith("image:"):
                image = line.split(":", 1)[1].strip().strip("\"'")
                assert image in ("chatgpt-qq-bot", "mlikiowa/napcat-docker:latest") or image.startswith(
                    "${MIRAI_IMAGE:?"
                ), f"{path} {name}: {image}"


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_mounts_hide_no_plugins(path):
    for name, lines in services(path).items():
        assert not any(v.endswith("/plugins") or "/plugins:" in v for v in list_items(lines, "volumes")), name


def test_compose_mirai_mentions_the_sign_server():
    text = (ROOT / "docker-compose.mirai.yml").read_text(encoding="utf-8")
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    assert "签名服务" in comments and "sign server" in comments and "KFCFactory.json" in comments
    docs = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert "签名服务" in docs and "sign server" in docs and "fix-protocol-version" in docs
    assert "MIRAI_IMAGE" in docs


def test_napcat_webui_is_bound_to_loopback():
    ports = list_items(services("docker-compose.napcat.yml")["napcat"], "ports")
    assert ports == ["127.0.0.1:6099:6099"]
    for path in COMPOSE_FILES:
        for name, lines in services(path).items():
            for port in list_items(lines, "ports"):
                assert "6099" not in port or port.startswith("127.0.0.1:"), f"{path} {name}: {port}"


@pytest.mark.parametrize("path", COMPOSE_FILES)
def test_compose_files_are_valid_yaml(path):
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((ROOT / path).read_text(encoding="utf-8"))
    assert "chatgpt" in doc["services"]


def test_start_sh_handles_old_venvs_and_config_cfg():
    text = (ROOT / "start.sh").read_text(encoding="utf-8")
    assert "rm -rf .venv" in text and "config.cfg" in text
    assert "(3, 11)" in text and "trap pause_on_failure EXIT" in text


def test_start_bat_finds_python_and_pauses_on_every_failure():
    text = (ROOT / "start.bat").read_bytes().decode("utf-8")
    lower = text.lower()
    assert 'py -3 -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)"' in text
    assert 'set "py=python"' in lower
    # "if errorlevel 1" misses crashes with negative exit codes
    code = "\n".join(line for line in lower.splitlines() if not line.startswith("rem "))
    assert "if errorlevel" not in code
    assert 'if not "%errorlevel%"=="0" goto fail' in lower
    after_bot = code.split('".venv\\scripts\\python.exe" bot.py %*', 1)[1]
    assert after_bot.lstrip().splitlines()[1].strip() == 'if not "%errorlevel%"=="0" goto fail'
    # a failed venv creation removes the half-made .venv; an old or broken one is rebuilt
    assert lower.count('rmdir /s /q ".venv"') >= 2 and "%py% -m venv .venv" in lower
    assert "config.cfg" in lower and "--config config.cfg" in lower
    fail = lower.split(":fail", 1)[1]
    assert "pause" in fail and "exit /b 1" in fail
    # every goto target exists
    labels = set(re.findall(r"^:(\w+)", lower, re.M))
    assert set(re.findall(r"goto (\w+)", lower)) <= labels
