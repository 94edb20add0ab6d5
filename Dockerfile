# ChatGPT QQ 机器人 / ChatGPT QQ bot
# 构建 build:  docker build -t chatgpt-qq-bot .
# 运行 run:    docker compose up -d   (见 docs/deploy.md)
# 挂载 mounts: /app/config.toml（配置文件；可写时网页控制台能保存它 / config, writable for the console's config page；v2 的 /app/config.cfg 也行 / or v2's /app/config.cfg）
#              /app/data（聊天记录数据库 data/bot.sqlite3 / history database）
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# 中文字体：把长回复渲染成图片时需要 / CJK font for replies rendered as images
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-wqy-microhei \
    && rm -rf /var/lib/apt/lists/*

# 固定 uid 1000，方便宿主机上 chown 1000:1000 data / fixed uid so the host can chown the data dir
RUN useradd --create-home --uid 1000 --user-group bot

WORKDIR /app

# 先装依赖，代码改动时可复用这一层 / dependencies first, so code changes reuse this layer
# 用 PostgreSQL / MySQL 时加上对应的驱动 / drivers for PostgreSQL or MySQL:
#   docker build --build-arg DB_DRIVERS="postgres" .   （或 "mysql"，或 "postgres mysql"）
ARG DB_DRIVERS=""
COPY requirements.txt requirements-postgres.txt requirements-mysql.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
    && for driver in $DB_DRIVERS; do pip install --no-cache-dir -r "requirements-$driver.txt"; done

COPY . .
RUN mkdir -p /app/data && chown -R bot:bot /app/data

USER bot

VOLUME ["/app/data"]

# 8554 = [mirai] reverse_ws_port（mirai-api-http 反向 WS）; 8566 = [onebot] reverse_ws_port（OneBot 反向 WS）
EXPOSE 8554 8566

# 健康检查：询问机器人自己的 /healthz（[web] port，默认 8560，只在容器内 127.0.0.1 上）。
# 每个聊天平台的连接都已连上（或正在监听等待对方连入）时才算健康；对方断开、连接失败时为 unhealthy。
# Health: ask the bot's own /healthz ([web] port, default 8560, container-local). Healthy only when every
# platform link is up or listening; a dropped or refused link makes the container unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "web.healthcheck"]

# 没有挂载 /app/config.toml 时：挂载了 v2 的 /app/config.cfg 就用它（v2 的 Docker 用户挂载的是它），
# 否则用内置的 config.example.toml 启动；两种情况都醒目提示。
# Without a mounted /app/config.toml: use a mounted v2 /app/config.cfg (what v2's Docker users mounted),
# else the bundled example; both say so loudly.
ENTRYPOINT ["/bin/sh", "-c", "if [ ! -f /app/config.toml ] && [ -f /app/config.cfg ]; then echo '!!! 没有 /app/config.toml，使用挂载的 v2 配置 /app/config.cfg 启动 / No /app/config.toml: starting with the mounted v2 config /app/config.cfg' >&2; case \" $* \" in *' --config'*) ;; *) set -- \"$@\" --config /app/config.cfg ;; esac; elif [ ! -f /app/config.toml ]; then echo '!!! 没有挂载配置文件 /app/config.toml，正在使用内置的 config.example.toml 启动，请挂载你自己的 config.toml（见 docs/deploy.md）' >&2; echo '!!! No config.toml mounted at /app/config.toml: starting with the bundled config.example.toml. Mount your own config.toml (see docs/deploy.md).' >&2; case \" $* \" in *' --config'*) ;; *) set -- \"$@\" --config config.example.toml ;; esac; fi; if [ ! -w /app/data ]; then echo '!!! /app/data 不可写，聊天记录无法保存：在宿主机上执行 chown -R 1000:1000 data / /app/data is not writable: run chown -R 1000:1000 data on the host' >&2; fi; exec \"$@\"", "entrypoint"]
CMD ["python", "bot.py"]
