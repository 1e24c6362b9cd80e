# One image for every edgefleet service; each compose service runs one command of it.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY edgefleet ./edgefleet
RUN pip install --no-cache-dir . && useradd --system --home /data edgefleet \
    && mkdir -p /data && chown edgefleet /data
USER edgefleet
WORKDIR /data
ENTRYPOINT ["edgefleet"]
