FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# CPU torch first (the CUDA wheel is the same command with the CUDA index), then the project.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY . /app
RUN pip install .

EXPOSE 8000
VOLUME ["/app/.paris"]
# Binding 0.0.0.0 needs an API key: run with -e PARIS_API_KEYS=KEY1,KEY2
# (or set PARIS_ALLOW_UNAUTHENTICATED_PUBLIC=true to serve without keys, explicitly).
CMD ["paris", "serve", "--host", "0.0.0.0", "--port", "8000"]
