FROM python:3.11-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends procps && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ade ade
COPY workers workers
RUN pip install --no-cache-dir .
ENV ADE_DATA_DIR=/data
VOLUME /data
