# Sourced by the device scripts (the GPU machine has no nox and no network): the workspace's
# packages, editable, without dependencies, plus any carried wheels (.whl/, e.g. fla-core, ninja).
python3 -m pip install -q --no-index --no-build-isolation --no-deps \
    -e packages/nsa-spec -e packages/nsa-torch -e packages/nsa-triton -e packages/nsa-cuda -e conformance
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    if [ -d /tmp/site/bin ]; then export PATH="/tmp/site/bin:$PATH"; fi  # e.g. ninja, for nsa-cuda's build
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
python3 -m nsa_spec.info | grep -E '^[a-z]' || true
