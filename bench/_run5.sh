pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=.:/tmp/site
date -u
python bench/bench_attention.py --precisions fp4 --shapes 1,24,4608,128 1,24,16384,128 1,40,32768,128 1,16,16384,64 1,24,34936,128 2>&1 | grep "sdpa_default\|sage3"
