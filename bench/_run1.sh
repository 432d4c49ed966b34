set -x
pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=.:/tmp/site
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
S="1,24,4608,128 1,24,16384,128 1,40,32768,128 1,16,16384,64 1,24,34936,128"
timeout 200 python -m pytest -c tests/pytest.ini --rootdir=tests tests/test_kernels_interpreter.py tests/test_gluon_fallback.py -q -x 2>&1 | tail -4
python _old/bench/bench_attention.py --precisions int8 --shapes $S 2>&1 | grep -v "^#" | tail -8
python bench/bench_attention.py --precisions int8 --shapes $S 2>&1 | grep -v "^#" | tail -8
python _old/bench/bench_attention.py --precisions int8 --no-baselines --shapes $S 2>&1 | grep -v "^#" | tail -7
python bench/profile_call.py --shapes 1,24,34936,128 1,40,32768,128 1,24,4608,128 2>&1 | tail -20
timeout 250 python -m pytest -c tests/pytest.ini --rootdir=tests tests/test_gpu_kernels.py tests/test_api.py -q -x 2>&1 | tail -4
