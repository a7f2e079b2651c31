#!/bin/sh
# Container entrypoint: on a GPU host, build TensorRT engines from the ONNX networks, then run
# Triton on the repository baked into the image.
#
#   WSSS_REPOSITORY   model repository (default: the one baked into the image)
#   WSSS_TENSORRT     auto (default: build engines when nvidia-smi sees a GPU) | never
#   WSSS_TRT_ARGS     extra arguments for export/tensorrt.py (e.g. "--fp16")
#
# export/tensorrt.py writes <model>/1/model.plan and <model>/configs/tensorrt.pbtxt next to the
# ONNX model; Triton then runs with --model-config-name=tensorrt, which uses those configs and
# falls back to config.pbtxt for every other model. Extra arguments go to tritonserver.
set -eu

REPOSITORY="${WSSS_REPOSITORY:-/opt/wsss/serving/model_repository}"
CONFIG_NAME=""

if [ "${WSSS_TENSORRT:-auto}" = "auto" ] && nvidia-smi -L >/dev/null 2>&1; then
    for model in "${REPOSITORY}"/*_cam_net "${REPOSITORY}"/*_deeplab; do
        [ -f "${model}/1/model.onnx" ] || continue
        echo "building a TensorRT engine for ${model}"
        # shellcheck disable=SC2086  # WSSS_TRT_ARGS is a list of options
        if python3 /opt/wsss/export/tensorrt.py "${model}" ${WSSS_TRT_ARGS:-}; then
            CONFIG_NAME="--model-config-name=tensorrt"
        else
            echo "TensorRT engine build failed for ${model}: it is served with ONNX Runtime" >&2
        fi
    done
fi

# densecrf's instance count for this host (its config says instances: auto; the other auto
# values are resolved by each instance at load).
( cd /opt/wsss && python3 -m wsss.export.ensembles "${REPOSITORY}" >/dev/null ) \
    || echo "could not fit densecrf to this host: it keeps its instance count" >&2

# shellcheck disable=SC2086  # CONFIG_NAME is empty or one option
exec tritonserver --model-repository="${REPOSITORY}" ${CONFIG_NAME} "$@"
