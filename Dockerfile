# alarm-bot: a slim runtime image. Build: docker build -t alarm-bot .
# Run in the terminal (embedded default):  docker run -it --rm alarm-bot
# Run against a Wechaty gateway:
#   docker run -d -e WECHATY_PUPPET_SERVICE_ENDPOINT=gateway:8788 \
#     -e WECHATY_PUPPET_SERVICE_TOKEN=... -e ALARM_BOT_ROOMS=接口报警群 alarm-bot

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY knowledge ./knowledge
RUN pip install --no-cache-dir build && python -m build --wheel --outdir /dist

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 alarmbot
COPY --from=build /dist/*.whl /tmp/
RUN pip install --no-cache-dir /tmp/*.whl && rm /tmp/*.whl
# The knowledge base ships inside the wheel; mount your own edited copy here and
# point ALARM_BOT_KNOWLEDGE_DIR at it to override.
COPY --chown=alarmbot knowledge /srv/knowledge
ENV ALARM_BOT_KNOWLEDGE_DIR=/srv/knowledge \
    PYTHONUNBUFFERED=1
USER alarmbot
WORKDIR /home/alarmbot
VOLUME ["/home/alarmbot/data"]
# SIGINT lets asyncio unwind and the channel log out cleanly.
STOPSIGNAL SIGINT
HEALTHCHECK NONE
RUN alarm-bot kb check
ENTRYPOINT ["alarm-bot"]
CMD ["run"]
