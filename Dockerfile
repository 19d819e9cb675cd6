# CPU worker image (onnxruntime). Build: docker build -t embedstream:cpu .
# The GPU image is deploy/Dockerfile.gpu (onnxruntime-gpu; never both runtimes in one image).
FROM python:3.11-slim
WORKDIR /opt/embedstream
COPY pyproject.toml README.md ./
COPY app ./app
COPY schemas ./schemas
COPY topics ./topics
RUN pip install --no-cache-dir -e ".[cpu]"
ENV EMBEDSTREAM_DATA_DIR=/var/lib/embedstream PYTHONUNBUFFERED=1
RUN mkdir -p /var/lib/embedstream && chown 65534:65534 /var/lib/embedstream
USER 65534:65534
EXPOSE 9464
ENTRYPOINT ["embedstream"]
CMD ["worker"]
