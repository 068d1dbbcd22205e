FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# torch first, pinned: from PyPI this is the CUDA build (what a GPU machine serving paris-2 wants).
# For a smaller CPU-only image, point pip at a CPU wheel, e.g. --build-arg TORCH="torch==2.13.0+cpu"
# together with PIP_FIND_LINKS/PIP_EXTRA_INDEX_URL naming where that wheel lives.
ARG TORCH="torch==2.13.0"
RUN pip install "$TORCH"
COPY . /app
RUN pip install .

EXPOSE 8000
VOLUME ["/app/.paris"]
# Binding 0.0.0.0 needs an API key: run with -e PARIS_API_KEYS=KEY1,KEY2
# (or set PARIS_ALLOW_UNAUTHENTICATED_PUBLIC=true to serve without keys, explicitly).
CMD ["paris", "serve", "--host", "0.0.0.0", "--port", "8000"]
