FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY projections ./projections
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT []
# The default roles (decider, projector, scheduler, dispatcher, inbound): give it the dispatcher's
# settings (ENROLLSTREAM_SMTP_HOST, ENROLLSTREAM_SENDER_FROM, ENROLLSTREAM_UNSUBSCRIBE_KEYS,
# ENROLLSTREAM_UNSUBSCRIBE_URL or _MAILTO; docker-compose.yml does) or it stops at start naming them.
CMD ["enrollstream", "worker"]
