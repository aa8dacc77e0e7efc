# rfm inference server. CPU image by default; GPU (CUDA wheels of torch) with --build-arg VARIANT=gpu.
#   docker build -t rfm-serve .                         # CPU
#   docker build -t rfm-serve:gpu --build-arg VARIANT=gpu .
#   docker run -p 8000:8000 rfm-serve                   # serves /app/checkpoints/default
#   docker run -p 8000:8000 -v $PWD/my_ckpt:/models/m -e RFM_CHECKPOINT=/models/m rfm-serve
# GPU: run with `--gpus all` (NVIDIA Container Toolkit); the torch CUDA wheels bring their own CUDA libraries.
FROM python:3.11-slim

ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# Where the CPU image takes torch from: a mirror of the CPU wheel index where download.pytorch.org is not reachable.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    RFM_CHECKPOINT=/app/checkpoints/default \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/.matplotlib

WORKDIR /app

# torch first, pinned, from the CPU wheel index for the CPU image (no CUDA libraries: ~1.5 GB smaller).
RUN if [ "$VARIANT" = "cpu" ]; then \
      pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"; \
    elif [ "$VARIANT" = "gpu" ]; then \
      pip install "torch==${TORCH_VERSION}"; \
    else echo "VARIANT must be cpu or gpu, got ${VARIANT}" >&2; exit 1; fi

# Then the project with the `serve` extra only: the server, both runners (torch, ONNX) and the ONNX exporter; no training
# or simulator packages (pyproject.toml lists the extras). Its constraints keep torch at the version
# above, whose layer stays cached. The build fails here if the image cannot load its default checkpoint.
# The CPU image ships the default checkpoint's ONNX Runtime engine (~95 MB, in /app/engines, read-only at run time
# through $RFM_ENGINE_PATH), so every container serves on it from its first request instead of exporting it at
# start. A checkpoint of your own: build FROM this image and prepare it the same way (docs/DEPLOYMENT.md).
# What the build leaves in /tmp (ONNX Runtime's ~/.cache, made mode 700 by root) goes: the server runs as `rfm`.
COPY . .
RUN pip install -c constraints.txt ".[serve]" \
    && python -c "import torch, serving.server, rfm.runtime.onnx_runner; \
assert torch.__version__.startswith('${TORCH_VERSION}'), torch.__version__" \
    && if [ "$VARIANT" = "cpu" ]; then \
      rfm serve --checkpoint "$RFM_CHECKPOINT" --engine onnx --engine-cache /app/engines --prepare --log-level warning; \
    else \
      rfm serve --checkpoint "$RFM_CHECKPOINT" --engine torch --device cpu --prepare --log-level warning; \
    fi \
    && rm -rf /tmp/* /tmp/.[!.]* \
    && useradd --create-home --uid 10001 rfm
ENV RFM_ENGINE_PATH=/app/engines

USER rfm
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" || exit 1

# One uvicorn worker per container: scale with replicas (see serving/deploy/k8s.yaml), not with workers.
ENTRYPOINT ["rfm", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD []
