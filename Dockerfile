FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY projections ./projections
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT []
CMD ["enrollstream", "worker"]
