# CPU image by default. For a GPU image:
#   docker build --build-arg BASE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t medseg:cuda .
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG EXTRAS=dicom,serve
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 MEDSEG_ROOT=/data
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/medseg
COPY . .
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install "torch==2.13.0" --index-url "${TORCH_INDEX}" \
    && /opt/venv/bin/pip install -c constraints.txt ".[${EXTRAS}]" \
    && /opt/venv/bin/pip install -c constraints.txt --no-deps "rt-utils==1.2.7"
ENV PATH=/opt/venv/bin:$PATH
# `docker run -p 8000:8000 -v MODELS:/models -v DATA:/data -e MEDSEG_TOKEN=... medseg` serves every
# model folder in MODELS. Clients outside the container are not loopback: without a token they get 403.
VOLUME ["/data", "/models"]
EXPOSE 8000
ENTRYPOINT ["medseg"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--models-dir", "/models", "--data", "/data/serve"]
