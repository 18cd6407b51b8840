# syntax=docker/dockerfile:1
# One image for every medir role (worker, UI, CLI). CPU by default; the CUDA variant differs
# only in the torch (and onnxruntime) wheels:
#   docker build -t medir:cpu .
#   docker build -t medir:cuda --build-arg TORCH_VARIANT=cuda .      # PyPI's CUDA build of torch
#   docker build -t medir:cu126 --build-arg TORCH_VARIANT=cu126 .    # a download.pytorch.org index
# The CUDA wheels carry the CUDA runtime and cuDNN themselves (nvidia-* packages), so the base
# stays python:3.11-slim: the host supplies only the driver, through the NVIDIA container toolkit.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

# cpu | cuda | cuXYZ (cu126, cu128, ...: a wheel index on download.pytorch.org)
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# pyproject extras, e.g. "paper" (transformers, timm) for the paper's DINO/RadImageNet models.
ARG MEDIR_EXTRAS=

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    MEDIR_DATA_DIR=/data \
    MEDIR_WEIGHTS_DIR=/models \
    MEDIR_STORE_PATH=/store/qdrant \
    MEDIR_CACHE_DIR=/store/cache \
    HF_HOME=/models/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib

# torch first, in its own layer: it is the largest download and changes least often.
# timm (extra "paper") needs torchvision, which must come from the same index as torch.
RUN set -eux; \
    pkgs="torch==${TORCH_VERSION}"; \
    if [ -n "${MEDIR_EXTRAS}" ]; then pkgs="${pkgs} torchvision"; fi; \
    case "${TORCH_VARIANT}" in \
      cpu)  pip install ${pkgs} --index-url https://download.pytorch.org/whl/cpu ;; \
      cuda) pip install ${pkgs} ;; \
      cu*)  pip install ${pkgs} --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" ;; \
      *)    echo "TORCH_VARIANT must be cpu, cuda or cuXYZ, not '${TORCH_VARIANT}'" >&2; exit 1 ;; \
    esac

WORKDIR /app
COPY . /app
# torch is already satisfied, so this resolves the rest against it. On CUDA variants the ONNX
# embedders need onnxruntime-gpu (same module name, so it replaces the CPU wheel).
RUN set -eux; \
    pip install "/app${MEDIR_EXTRAS:+[${MEDIR_EXTRAS}]}"; \
    if [ "${TORCH_VARIANT}" != cpu ]; then \
      pip uninstall -y onnxruntime && pip install onnxruntime-gpu; \
    fi; \
    python -c "import medir, torch; print('medir', medir.__name__, 'torch', torch.__version__)"

# An unprivileged user; compose may override the uid/gid to match bind-mounted host folders.
# /store is world-writable because a named volume copies its mode, whatever uid compose uses.
RUN set -eux; \
    useradd --create-home --uid 1000 --user-group medir; \
    mkdir -p /data /models /store; \
    chown medir:medir /data /models /store; \
    chmod 1777 /store
USER medir
VOLUME ["/data", "/models", "/store"]

EXPOSE 8501
# The services in docker-compose.yml set their own command; the bare image is the CLI.
ENTRYPOINT []
CMD ["medir", "--help"]
