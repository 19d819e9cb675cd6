# CPU worker image. Build: docker build -t embedstream:cpu .
# GPU image: docker build --build-arg RUNTIME=gpu --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 ...
# (the deployment issue adds the dedicated GPU Dockerfile and compose profile)
ARG BASE=python:3.11-slim
FROM ${BASE}
ARG RUNTIME=cpu
WORKDIR /opt/embedstream
COPY pyproject.toml README.md ./
COPY app ./app
COPY schemas ./schemas
COPY topics ./topics
RUN pip install --no-cache-dir -e ".[${RUNTIME}]"
ENV EMBEDSTREAM_DATA_DIR=/var/lib/embedstream PYTHONUNBUFFERED=1
USER 65534:65534
ENTRYPOINT ["embedstream"]
CMD ["worker"]
