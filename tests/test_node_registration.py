"""The pack loads through ComfyUI's own custom-node loader and registers its three nodes with the documented inputs."""
import sys
from pathlib import Path

from tests.support.sage3_pack import REGISTRY_ID, load_pack

PACK, COMFY_NODES = load_pack()


def _inputs(node_id):
    node = COMFY_NODES.NODE_CLASS_MAPPINGS[node_id]
    return node.INPUT_TYPES()["required"]


def test_three_nodes_registered_with_display_names():
    for node_id, name in (("Sage3AttentionPatch", "Sage3 Attention Patch"),
                          ("Sage3AttentionQuality", "Sage3 Attention Quality"),
                          ("Sage3AttentionReport", "Sage3 Attention Report")):
        assert node_id in COMFY_NODES.NODE_CLASS_MAPPINGS
        assert COMFY_NODES.NODE_DISPLAY_NAME_MAPPINGS[node_id] == name
        assert COMFY_NODES.NODE_CLASS_MAPPINGS[node_id].RELATIVE_PYTHON_MODULE == f"custom_nodes.{REGISTRY_ID}"


def test_patch_node_inputs_and_defaults():
    inputs = _inputs("Sage3AttentionPatch")
    assert list(inputs) == ["model", "precision", "fallback", "qk_smoothing", "int8_pv"]
    assert inputs["model"][0] == "MODEL"
    assert inputs["precision"][1]["options"] == ["auto", "fp4", "int8", "sdpa"]
    assert inputs["precision"][1]["default"] == "auto"
    assert inputs["fallback"][1]["options"] == ["sdpa", "error"]
    assert inputs["fallback"][1]["default"] == "sdpa"
    assert inputs["qk_smoothing"][1]["options"] == ["auto", "per_block", "global", "off"]
    assert inputs["qk_smoothing"][1]["default"] == "auto"
    assert inputs["int8_pv"][1]["options"] == ["16bit", "auto", "int8"]
    assert inputs["int8_pv"][1]["default"] == "16bit"
    assert list(COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"].RETURN_TYPES) == ["MODEL"]


def test_quality_node_inputs_and_defaults():
    inputs = _inputs("Sage3AttentionQuality")
    assert list(inputs) == ["model", "keep_first_steps", "keep_last_steps", "keep_blocks", "high_precision",
                            "calibrate", "min_similarity", "watch_nonfinite"]
    assert inputs["keep_first_steps"][0] == "INT" and inputs["keep_first_steps"][1]["default"] == 0
    assert inputs["keep_last_steps"][0] == "INT" and inputs["keep_last_steps"][1]["default"] == 0
    assert inputs["keep_blocks"][0] == "STRING" and inputs["keep_blocks"][1]["default"] == ""
    assert inputs["high_precision"][1]["options"] == ["int8", "sdpa"]
    assert inputs["high_precision"][1]["default"] == "sdpa"
    assert inputs["calibrate"][0] == "BOOLEAN" and inputs["calibrate"][1]["default"] is False
    assert inputs["min_similarity"][0] == "FLOAT" and inputs["min_similarity"][1]["default"] == 0.995
    assert inputs["watch_nonfinite"][0] == "BOOLEAN" and inputs["watch_nonfinite"][1]["default"] is True
    optional = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionQuality"].INPUT_TYPES()["optional"]
    assert list(optional) == ["time_attention"]  # optional: workflows saved before it load unchanged
    assert optional["time_attention"][0] == "BOOLEAN" and optional["time_attention"][1]["default"] is False


def test_report_node_is_an_output_node_with_model_and_latent_inputs():
    node = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionReport"]
    inputs = _inputs("Sage3AttentionReport")
    assert list(inputs) == ["model", "samples"]
    assert inputs["model"][0] == "MODEL" and inputs["samples"][0] == "LATENT"
    assert list(node.RETURN_TYPES) == ["STRING"]
    assert node.OUTPUT_NODE is True


def test_pack_does_not_shadow_comfyui_nodes_module():
    # ComfyUI's nodes.py stays `nodes`; our node package is only reachable under the pack's own name.
    assert Path(sys.modules["nodes"].__file__).name == "nodes.py"
    assert PACK.nodes.__name__.endswith(f"{REGISTRY_ID}.nodes")
    pack_dir = str(Path(PACK.__file__).parent)
    comfy_root = str(Path(COMFY_NODES.__file__).parent)
    assert sys.path.index(pack_dir) > sys.path.index(comfy_root)  # appended, never in front


def test_quality_node_validates_keep_blocks_before_queueing():
    node = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionQuality"]
    assert node.validate_inputs(keep_blocks="double:0-2, single:37, refiner") is True
    message = node.validate_inputs(keep_blocks="double:2-0")
    assert isinstance(message, str) and "below its start" in message
