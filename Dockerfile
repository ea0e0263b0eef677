FROM python:3.11-slim
ENV RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY filters ./filters
COPY workers ./workers
COPY service ./service
RUN pip install --no-cache-dir .
