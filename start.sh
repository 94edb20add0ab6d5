#!/usr/bin/env bash
# ChatGPT QQ 机器人一键启动（Linux / macOS）/ one-click start: ./start.sh [--console] [--config PATH]
# 国内网络可以取消下一行注释，使用清华镜像安装依赖 / uncomment to install from a PyPI mirror:
# export PIP_INDEX_URL=https://pypi.tuna.tsinghua.edu.cn/simple
set -euo pipefail
cd "$(dirname "$0")"

# 出错时停下来等回车，双击或在新窗口里运行时才看得到错误；非终端（systemd、测试）不等。
# Pause on any failed exit so a window opened just for this script stays readable; never when not on a terminal.
pause_on_failure() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ] && [ -t 0 ]; then
        echo "启动失败（退出码 $rc），请查看上面的错误信息。按回车键退出 (start-up failed, press Enter)" >&2
        read -r _ || true
    fi
}
trap pause_on_failure EXIT

# 看输出而不是退出码：坏掉的 .venv/bin/python 可能是任何能退出 0 的东西
# Judge by the printed answer, not the exit code: a broken interpreter may still exit 0.
python_ok() {
    [ "$("$1" -c 'import sys; print("ok" if sys.version_info >= (3, 11) else "old")' 2>/dev/null)" = "ok" ]
}

PYTHON=""
for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
        PYTHON="$candidate"
        break
    fi
done

# 旧 Python 建的 .venv（或 Python 已被卸载）装不上依赖（Requires-Python >=3.11），删掉重建
# A .venv from an older Python, or whose Python is gone, cannot install the requirements: rebuild it.
if { [ -e .venv ] || [ -L .venv/bin/python ]; } && ! python_ok .venv/bin/python; then
    if [ -z "$PYTHON" ]; then
        echo ".venv 里的 Python 太旧或已不存在，需要 Python 3.11 或更新的版本来重建。(.venv's Python is older than 3.11 or gone)" >&2
    else
        echo ".venv 里的 Python 太旧（低于 3.11）或已不存在，正在删除并重建 .venv …… (.venv's Python is older than 3.11 or gone: recreating .venv)"
        rm -rf .venv
    fi
fi

if [ -z "$PYTHON" ] && ! python_ok .venv/bin/python; then
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
        # 留下半个 .venv 会让下次启动误以为它可用 / a half-made .venv would be reused next time
        rm -rf .venv
        echo "创建虚拟环境失败。Debian/Ubuntu 请先执行：sudo apt install python3-venv（或 python3.11-venv）(creating .venv failed)" >&2
        exit 1
    fi
fi

# requirements.txt 没变时跳过安装 / skip pip when requirements.txt is unchanged
if ! cmp -s requirements.txt .venv/requirements.installed; then
    echo "正在安装依赖 …… (installing requirements)"
    if ! .venv/bin/python -m pip install -r requirements.txt; then
        echo "安装依赖失败，请查看上面的错误信息；国内网络可在本脚本开头设置 PIP_INDEX_URL。(pip install failed)" >&2
        exit 1
    fi
    cp requirements.txt .venv/requirements.installed
fi

has_config_arg=false
for arg in "$@"; do
    case "$arg" in
        --config | --config=*) has_config_arg=true ;;
    esac
done

if [ ! -f config.toml ] && [ -f config.cfg ] && [ "$has_config_arg" = false ]; then
    # v2 用户的 config.cfg 也是 TOML，直接用它，不要用示例覆盖 / v2's config.cfg is TOML too: use it as is
    echo "没有 config.toml，使用 v2 的 config.cfg 启动。(no config.toml: using config.cfg)"
    set -- "$@" --config config.cfg
elif [ ! -f config.toml ]; then
    cp config.example.toml config.toml
    echo "================================================================"
    echo "已创建 config.toml（复制自 config.example.toml）。"
    echo "请编辑 config.toml，填写 QQ 号、api_key 和模型账号，然后重新运行 ./start.sh"
    echo "下面先启动一次，日志会指出还缺什么。"
    echo "Created config.toml from config.example.toml: edit it, then run ./start.sh again."
    echo "================================================================"
fi

mkdir -p data
if [ -t 0 ]; then
    # 终端里不用 exec，机器人出错退出时上面的 trap 才能暂停 / no exec on a terminal so the trap can pause
    .venv/bin/python bot.py "$@"
else
    exec .venv/bin/python bot.py "$@"
fi
