"""Both bundled workflows run end to end on a real ComfyUI 0.3.75 server (CPU) with this pack installed.

Each UI workflow is converted to an API prompt through the server's /object_info, shrunk (64x64 px, 1 step, a few
frames) and switched to precision=int8 so the Triton kernel runs (in Triton's interpreter: TRITON_INTERPRET=1).
The model files are tiny random-weight stand-ins that the stock loaders accept (tests/support/model_files.py).
Timings and the server's peak memory go to artifacts/server_workflows.json.
"""
import json
import time

import numpy as np
import pytest

from tests.support import bundled_workflows as bw
from tests.support import model_files
from tests.support.comfy_env import REPO, comfyui_root, import_comfy
from tests.support.comfy_server import ComfyServer
from tests.support.sage3_pack import REGISTRY_ID
from tests.support.workflow_api import set_inputs, to_api
from tests.support.workflow_check import check

pytestmark = pytest.mark.skipif(comfyui_root() is None, reason="ComfyUI tree missing: run scripts/setup_env.sh")

PEAK_RSS_BUDGET = 12 * 2**30
STATS = REPO / "artifacts" / "server_workflows.json"
WRITERS = {  # file name a workflow's loader asks for -> tiny stand-in of that format
    "flux1-dev.safetensors": model_files.write_flux_dev,
    "hunyuan_video_t2v_720p_bf16.safetensors": model_files.write_hunyuan_video,
    "clip_l.safetensors": model_files.write_clip_l,
    "t5xxl_fp16.safetensors": model_files.write_t5xxl,
    "llava_llama3_fp8_scaled.safetensors": model_files.write_llava_llama3,
    "ae.safetensors": model_files.write_flux_vae,
    "hunyuan_video_vae_bf16.safetensors": model_files.write_hunyuan_video_vae,
}
SHRINK = {  # class_type -> literal inputs overridden in the converted prompt only
    "Sage3AttentionPatch": {"precision": "int8"},
    "EmptySD3LatentImage": {"width": 64, "height": 64},
    "KSampler": {"steps": 1},
    "EmptyHunyuanLatentVideo": {"width": 64, "height": 64, "length": 5},
    "BasicScheduler": {"steps": 1},
}


def _peak_rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


@pytest.fixture(scope="module")
def stats():
    data = {}
    yield data
    STATS.parent.mkdir(exist_ok=True)
    STATS.write_text(json.dumps(data, indent=2) + "\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory, stats):
    import_comfy()  # model_files reads shapes from ComfyUI's classes
    base = tmp_path_factory.mktemp("comfy_base")
    started = time.monotonic()
    for name in bw.NAMES:
        for folder, file_name in bw.model_files(bw.load(name)):
            target = base / "models" / folder / file_name
            if not target.exists():
                WRITERS[file_name](target)
    stats["write_models_s"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    with ComfyServer(base, env={"TRITON_INTERPRET": "1"}, extra_args=model_files.SERVER_ARGS) as srv:
        stats["server_start_s"] = round(time.monotonic() - started, 1)
        yield srv


def test_template_browser_lists_and_serves_the_workflows(server):
    assert sorted(server.get("/workflow_templates")[REGISTRY_ID]) == sorted(bw.NAMES)
    for name in bw.NAMES:
        served = server.get_bytes(f"/api/workflow_templates/{REGISTRY_ID}/{name}.json")
        assert json.loads(served) == bw.load(name)


@pytest.mark.parametrize("name", bw.NAMES)
def test_workflow_fits_the_live_registry(server, name):
    assert check(bw.load(name), server.get("/object_info")) == []


def _run(server, name, stats) -> tuple[dict, dict]:
    prompt = to_api(bw.load(name), server.get("/object_info"))
    for class_type, values in SHRINK.items():
        set_inputs(prompt, class_type, **values)
    started = time.monotonic()
    entry = server.run_prompt(prompt, timeout=900)
    stats[f"{name}_run_s"] = round(time.monotonic() - started, 1)
    return prompt, entry["outputs"]


def _report_of(prompt: dict, outputs: dict) -> str:
    report_id = next(i for i, n in prompt.items() if n["class_type"] == "Sage3AttentionReport")
    return "\n".join(outputs[report_id]["text"])


def _assert_no_nan_warnings(server):
    """numpy warns when NaN/inf is cast to integers (image saving, the Triton interpreter's int8 casts)."""
    log = server.log_path.read_text(errors="replace")
    assert "invalid value encountered" not in log and "All-NaN" not in log, server.log_tail()


def _site_lines(report: str) -> dict:
    """{site label: line} from the report's indented block under "call sites:"."""
    lines = report.splitlines()
    start = lines.index("call sites:") + 1
    block = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        block.append(line.strip())
    return {line.split(" ")[0].rstrip(":"): line for line in block}


def _assert_kernel_ran_everywhere(report: str, sites: set):
    found = _site_lines(report)
    assert set(found) == sites, report
    assert all("kernel triton." in line for line in found.values()), report


@pytest.mark.timeout(900)
def test_flux_dev_workflow_makes_an_image_with_the_triton_kernel(server, stats):
    from PIL import Image

    prompt, outputs = _run(server, "flux_dev_sage3", stats)
    save_id = next(i for i, n in prompt.items() if n["class_type"] == "SaveImage")
    (image,) = outputs[save_id]["images"]
    with Image.open(server.base / "output" / image["subfolder"] / image["filename"]) as png:
        assert png.size == (64, 64)
        pixels = np.asarray(png.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 1.0  # NaN anywhere upstream saves as a flat black image
    _assert_kernel_ran_everywhere(_report_of(prompt, outputs), {"double:0"})
    _assert_no_nan_warnings(server)


@pytest.mark.timeout(900)
def test_hunyuan_video_workflow_makes_a_video_with_the_triton_kernel(server, stats):
    import av

    prompt, outputs = _run(server, "hunyuan_video_sage3", stats)
    save_id = next(i for i, n in prompt.items() if n["class_type"] == "SaveVideo")
    (video,) = outputs[save_id]["images"]
    with av.open(str(server.base / "output" / video["subfolder"] / video["filename"])) as container:
        frames = [f for f in container.decode(video=0)]
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (64, 64)
    assert np.stack([f.to_ndarray(format="rgb24") for f in frames]).astype(np.float32).std() > 1.0
    _assert_kernel_ran_everywhere(_report_of(prompt, outputs), {"refiner", "refiner#1", "double:0", "single:0"})
    _assert_no_nan_warnings(server)


def test_server_peak_memory_within_budget(server, stats):
    """Runs last in this module: the server's peak RSS over both workflows."""
    peak = _peak_rss(server.proc.pid)
    stats["server_peak_rss_gib"] = round(peak / 2**30, 2)
    assert peak < PEAK_RSS_BUDGET
