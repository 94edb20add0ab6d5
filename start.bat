@echo off
rem ChatGPT QQ bot one-click start for Windows: double-click, or start.bat --console
rem To install from a PyPI mirror in China, remove "rem " from the next line:
rem set PIP_INDEX_URL=https://pypi.tuna.tsinghua.edu.cn/simple
chcp 65001 >nul
setlocal
cd /d "%~dp0"

set "PY="
for %%V in (3.13 3.12 3.11) do (
    if not defined PY py -%%V -c "import sys" >nul 2>&1 && set "PY=py -%%V"
)
if not defined PY (
    python -c "import sys; sys.exit(sys.version_info < (3, 11))" >nul 2>&1 && set "PY=python"
)
if not defined PY if not exist ".venv\Scripts\python.exe" (
    echo 没有找到 Python 3.11 或更新的版本。
    echo 请从 https://www.python.org/downloads/ 下载安装，安装时勾选 "Add python.exe to PATH"。
    echo Python 3.11+ not found: install it from python.org first.
    goto fail
)

if not exist ".venv\Scripts\python.exe" (
    echo 正在创建虚拟环境 .venv ……
    %PY% -m venv .venv || goto fail
)

fc /b requirements.txt ".venv\requirements.installed" >nul 2>&1
if errorlevel 1 (
    echo 正在安装依赖 ……
    ".venv\Scripts\python.exe" -m pip install -r requirements.txt || goto fail
    copy /y requirements.txt ".venv\requirements.installed" >nul
)

if not exist config.toml (
    copy config.example.toml config.toml >nul || goto fail
    echo ================================================================
    echo 已创建 config.toml，现在用记事本打开它。
    echo 请填写 QQ 号、api_key 和模型账号，保存并关闭记事本后按任意键启动机器人。
    echo Created config.toml: edit it in Notepad, save, close it, then press a key.
    echo ================================================================
    notepad config.toml
    pause
)

if not exist data mkdir data
".venv\Scripts\python.exe" bot.py %*
if errorlevel 1 goto fail
endlocal
exit /b 0

:fail
echo.
echo 启动失败，请查看上面的错误信息。Start-up failed: see the messages above.
pause
exit /b 1
