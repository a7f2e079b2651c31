# WSSS serving image: NVIDIA Triton + this project's model repository and Python-backend code.
#
# Base: Triton 24.10 = Triton 2.51.0, the same server as the local CPU binary in nvidia-pytriton
# 0.7.0; CUDA 12.6.2, TensorRT 10.5.0.18, ONNX Runtime 1.19.2 (ONNX IR <= 10, opset <= 21),
# Ubuntu 22.04 with Python 3.10 (the Python backend's interpreter).
#
# Before building, export the networks into serving/model_repository (python export/onnx.py
# RUN_DIR) and write the ensembles (python -m wsss.export.ensembles; serving/serve.py does it).
#
#   docker build -t wsss-serving .
#   docker run --gpus all --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 wsss-serving
#
# --shm-size: the Python-backend models pass tensors through /dev/shm; Docker's 64 MB default
# fails on large images ("Stub process is unhealthy"). Without --gpus the ONNX models run on
# Triton's CPU ONNX Runtime backend and no engines are built; --build-arg TENSORRT_TOOLS=0 leaves
# the engine tooling (torch, tensorrt, several GB) out of the image.
FROM nvcr.io/nvidia/tritonserver:24.10-py3

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1

WORKDIR /opt/wsss

# A compiler and Python headers for pydensecrf2 (built from its sdist).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ python3-dev \
    && rm -rf /var/lib/apt/lists/*

# The Python backends need numpy<2 (the 2.51 Python backend returns empty tensors with numpy 2),
# Pillow and pydensecrf2; the repository tools need tritonclient's config protobuf and onnx.
RUN python3 -m pip install \
        "numpy>=1.26,<2" \
        "pillow>=10" \
        "pydensecrf2==1.1" \
        "onnx==1.23.2" \
        "tritonclient[grpc]==2.73.0"

# Engine building (export/tensorrt.py): TensorRT bindings of the container's version (10.5, so
# the plans load in this Triton), ONNX Runtime for the parity check, PyTorch for CUDA buffers.
# PyPI's torch 2.11 is a CUDA 13 build: building engines needs a driver >= 580; serving does not.
ARG TENSORRT_TOOLS=1
RUN if [ "${TENSORRT_TOOLS}" = "1" ]; then \
        python3 -m pip install "tensorrt-cu12==10.5.0" "onnxruntime==1.23.2" "torch==2.11.0"; \
    fi

COPY pyproject.toml README.md ./
COPY wsss ./wsss
RUN python3 -m pip install --no-deps .

COPY export ./export
COPY serving ./serving
RUN python3 -m wsss.export.ensembles serving/model_repository

EXPOSE 8000 8001 8002

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]

ENTRYPOINT ["/opt/wsss/serving/docker/entrypoint.sh"]
