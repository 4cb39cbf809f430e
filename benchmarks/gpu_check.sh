#!/bin/sh
# The GPU check on the GPU machine, which has no network (docs/performance.md, "The GPU check"): the wheels
# that `make gpu-wheels` gathered (carried as wheels/) installed offline, the CUDA tests (tests/test_cuda.py,
# pytest -m cuda), then benchmarks/gpu.py with what is left of LIMIT_S seconds (default 520: the whole
# command fits one 540 s call; TESTS=0 leaves the tests out; arguments go to gpu.py). Everything is written
# under $OUT (else results/gpu): install.txt,
# cuda-tests.txt + cuda-tests.xml (the recorded peak memories and gaps are properties there), gpu.txt, gpu.json.
set -u
start=$(date +%s)
limit=${LIMIT_S:-520}
out=${OUT:-results/gpu}
mkdir -p "$out"
export PIP_CONFIG_FILE=/dev/null  # the wheels/ folder and nothing else
unset PIP_FIND_LINKS PIP_INDEX_URL PIP_EXTRA_INDEX_URL
elapsed() { echo $(( $(date +%s) - start )); }

py=${PYTHON:-python3}
venv=${VENV-.gpu-venv}  # VENV= (empty): install into $PYTHON's own environment (the rehearsal's venv)
if [ ! -f wheels/requirements.txt ]; then
    echo "wheels/requirements.txt is missing: run 'make gpu-wheels' where there is network and carry wheels/"
    exit 2
fi
if [ -n "$venv" ] && $py -m venv --system-site-packages "$venv" >"$out/install.txt" 2>&1 \
        && "$venv/bin/python" -c "import torch, timm" >>"$out/install.txt" 2>&1; then
    py=$venv/bin/python  # the machine's torch, timm ... are seen through --system-site-packages
fi  # else (no venv module, or a python3 that is itself a venv's, whose packages a new venv does not see):
if [ -n "$venv" ] && [ "$py" != "$venv/bin/python" ]; then  # the wheels into a folder of their own, first
    site=${SITE:-$PWD/.gpu-site}
    tag=$($py -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
    $py -m pip install --no-index --no-deps --target "$site" wheels/*-py3-none-any.whl \
        wheels/*-"$tag"-*.whl >>"$out/install.txt" 2>&1
    export PYTHONPATH="$site"
else
    $py -m pip install --no-index --find-links wheels -r wheels/requirements.txt >>"$out/install.txt" 2>&1
fi
status=$?
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
echo "install: exit $status, $(elapsed) s ($py, $($py -V 2>&1))"
if [ $status -ne 0 ]; then tail -20 "$out/install.txt"; exit 1; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

tests=0
if [ "${TESTS:-1}" = 1 ]; then  # TESTS=0: gpu.py alone (a second call, e.g. with --only finetune)
    timeout 200 $py -m pytest -q -p no:cacheprovider -m cuda -rs tests/test_cuda.py \
        --junitxml="$out/cuda-tests.xml" >"$out/cuda-tests.txt" 2>&1
    tests=$?
    echo "cuda tests: exit $tests, $(elapsed) s"
    grep -E "passed|failed|error|skipped|^FAILED|^ERROR|^E  " "$out/cuda-tests.txt" | tail -25
fi

left=$(( limit - $(elapsed) ))
echo "gpu.py: ${left} s left, its budget $(( left - 60 )) s"
timeout "$left" $py benchmarks/gpu.py --out "$out" --budget-s $(( left - 60 )) "$@" >"$out/gpu.txt" 2>&1
bench=$?
grep -v "^  \|^Traceback\|^ *\^" "$out/gpu.txt" | cut -c1-400
echo "gpu.py: exit $bench, $(elapsed) s in all"
[ $tests -eq 0 ] && [ $bench -eq 0 ]
