pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=.:/tmp/site
S="1,24,4608,128 1,24,16384,128 1,40,32768,128 1,16,16384,64 1,24,34936,128"
timeout 200 python -m pytest -c tests/pytest.ini --rootdir=tests tests/test_kernels_interpreter.py tests/test_gpu_kernels.py -q -x -k "chunk or bias or column or memory" 2>&1 | tail -2
for i in 1 2; do
python _old/bench/bench_attention.py --precisions int8 --no-baselines --shapes $S 2>&1 | grep "sage3"
python bench/bench_attention.py --precisions int8 --no-baselines --shapes $S 2>&1 | grep "sage3"
done
python bench/profile_call.py --shapes 1,24,34936,128 1,40,32768,128 1,16,16384,64 2>&1 | grep -A7 "sage3"
