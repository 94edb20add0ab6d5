@echo off
rem ChatGPT QQ bot one-click start for Windows: double-click, or start.bat --console
rem To install from a PyPI mirror in China, remove "rem " from the next line:
rem set PIP_INDEX_URL=https://pypi.tuna.tsinghua.edu.cn/simple
chcp 65001 >nul
setlocal
cd /d "%~dp0"

rem 用 py -3 找最新的 Python 3，再检查版本 >= 3.11；找不到时退回 PATH 里的 python
rem py -3 picks the newest Python 3 installed; the version check decides, then "python" on PATH.
set "PY="
py -3 -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)" >nul 2>&1
if "%ERRORLEVEL%"=="0" set "PY=py -3"
if defined PY goto have_python
python -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)" >nul 2>&1
if "%ERRORLEVEL%"=="0" set "PY=python"
:have_python

rem 旧 Python 建的 .venv（或 Python 已被卸载）装不上依赖，删掉重建
rem A .venv from an older Python, or whose Python is gone, cannot install the requirements: rebuild it.
if not exist ".venv" goto venv_checked
".venv\Scripts\python.exe" -c "import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)" >nul 2>&1
if "%ERRORLEVEL%"=="0" goto venv_checked
if not defined PY goto no_python
echo .venv 里的 Python 太旧（低于 3.11）或已不存在，正在删除并重建 .venv …… (.venv's Python is older than 3.11 or gone: recreating)
rmdir /s /q ".venv"
if exist ".venv" goto fail
:venv_checked

if exist ".venv\Scripts\python.exe" goto venv_ready
if not defined PY goto no_python
echo 正在创建虚拟环境 .venv …… (creating .venv)
%PY% -m venv .venv
if "%ERRORLEVEL%"=="0" goto venv_ready
rem 留下半个 .venv 会让下次启动误以为它可用 / a half-made .venv would be reused next time
if exist ".venv" rmdir /s /q ".venv"
echo 创建虚拟环境失败。(creating .venv failed)
goto fail
:venv_ready

fc /b requirements.txt ".venv\requirements.installed" >nul 2>&1
if "%ERRORLEVEL%"=="0" goto installed
echo 正在安装依赖 …… (installing requirements)
".venv\Scripts\python.exe" -m pip install -r requirements.txt
if not "%ERRORLEVEL%"=="0" goto fail
copy /y requirements.txt ".venv\requirements.installed" >nul
:installed

set "CONFIG_ARG="
if exist config.toml goto config_ready
if not exist config.cfg goto new_config
rem v2 的 config.cfg 也是 TOML，直接用它，不要用示例覆盖 / v2's config.cfg is TOML too: use it as is
echo 没有 config.toml，使用 v2 的 config.cfg 启动。(no config.toml: using config.cfg)
set "CONFIG_ARG=--config config.cfg"
echo %* | find /i "--config" >nul && set "CONFIG_ARG="
goto config_ready
:new_config
copy config.example.toml config.toml >nul
if not "%ERRORLEVEL%"=="0" goto fail
echo ================================================================
echo 已创建 config.toml，现在用记事本打开它。
echo 请填写 QQ 号、api_key 和模型账号，保存并关闭记事本后按任意键启动机器人。
echo Created config.toml: edit it in Notepad, save, close it, then press a key.
echo ================================================================
notepad config.toml
pause
:config_ready

if not exist data mkdir data
".venv\Scripts\python.exe" bot.py %* %CONFIG_ARG%
rem 崩溃时退出码可能是负数，if errorlevel 1 看不到 / a crash can exit negative, which "if errorlevel 1" misses
if not "%ERRORLEVEL%"=="0" goto fail
endlocal
exit /b 0

:no_python
echo 没有找到 Python 3.11 或更新的版本。
echo 请从 https://www.python.org/downloads/ 下载安装（安装时勾选 "Add python.exe to PATH"）。
echo Python 3.11+ not found: install it from python.org first.
goto fail

:fail
echo.
echo 启动失败，请查看上面的错误信息。Start-up failed: see the messages above.
pause
exit /b 1
