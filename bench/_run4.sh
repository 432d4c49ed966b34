pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=.:/tmp/site
date -u
timeout 330 python -m pytest -c tests/pytest.ini --rootdir=tests tests/test_gpu_kernels.py tests/test_kernels_interpreter.py tests/test_gluon_fallback.py tests/test_api.py tests/test_formats.py -q -x 2>&1 | tail -2
S="1,24,4608,128 1,24,16384,128 1,40,32768,128 1,16,16384,64 1,24,34936,128"
python bench/bench_attention.py --precisions int8 --shapes $S 2>&1 | grep -v "^#" | grep -v "flash\|cudnn"
COMFYUI_ROOT=.bench_comfy timeout 200 python bench/bench_e2e.py --precisions sdpa int8 2>&1 | grep "Flux\|Hunyuan"
timeout 150 /usr/local/cuda/bin/compute-sanitizer --tool memcheck python bench/sanitize_run.py 2>&1 | tail -3
