#!/usr/bin/env bash
# ChatGPT QQ 机器人一键启动（Linux / macOS）/ one-click start: ./start.sh [--console] [--config PATH]
# 国内网络可以取消下一行注释，使用清华镜像安装依赖 / uncomment to install from a PyPI mirror:
# export PIP_INDEX_URL=https://pypi.tuna.tsinghua.edu.cn/simple
set -euo pipefail
cd "$(dirname "$0")"

python_ok() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}

PYTHON=""
for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
        PYTHON="$candidate"
        break
    fi
done
if [ -z "$PYTHON" ] && [ ! -x .venv/bin/python ]; then
    echo "没有找到 Python 3.11 或更新的版本。请先安装：" >&2
    echo "  Debian/Ubuntu:  sudo apt install python3.11 python3.11-venv" >&2
    echo "  CentOS/RHEL:    sudo dnf install python3.11" >&2
    echo "  macOS:          brew install python@3.11" >&2
    echo "  或从 https://www.python.org/downloads/ 下载安装。(Python 3.11+ not found)" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    echo "正在创建虚拟环境 .venv …… (creating .venv)"
    if ! "$PYTHON" -m venv .venv; then
        rm -rf .venv
        echo "创建虚拟环境失败。Debian/Ubuntu 请先执行：sudo apt install python3-venv（或 python3.11-venv）" >&2
        exit 1
    fi
fi

# requirements.txt 没变时跳过安装 / skip pip when requirements.txt is unchanged
if ! cmp -s requirements.txt .venv/requirements.installed; then
    echo "正在安装依赖 …… (installing requirements)"
    .venv/bin/python -m pip install -r requirements.txt
    cp requirements.txt .venv/requirements.installed
fi

if [ ! -f config.toml ]; then
    cp config.example.toml config.toml
    echo "================================================================"
    echo "已创建 config.toml（复制自 config.example.toml）。"
    echo "请编辑 config.toml，填写 QQ 号、api_key 和模型账号，然后重新运行 ./start.sh"
    echo "下面先启动一次，日志会指出还缺什么。"
    echo "Created config.toml from config.example.toml: edit it, then run ./start.sh again."
    echo "================================================================"
fi

mkdir -p data
exec .venv/bin/python bot.py "$@"
