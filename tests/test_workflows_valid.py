"""The bundled workflows fit the real ComfyUI 0.3.75 node registry (core + comfy_extras + this pack, loaded in-process
through ComfyUI's own loaders), and the checker that says so rejects broken copies."""
import copy

import pytest

from tests.support import bundled_workflows as bw
from tests.support.comfy_env import comfyui_root
from tests.support.workflow_check import check
from tests.support.workflow_spec import VIRTUAL_NODES

pytestmark = pytest.mark.skipif(comfyui_root() is None, reason="ComfyUI tree missing: run scripts/setup_env.sh")

# The documented model layout (docs/WORKFLOWS.md): the loaders must ask for exactly these files.
EXPECTED_MODELS = {
    "flux_dev_sage3": [("diffusion_models", "flux1-dev.safetensors"), ("text_encoders", "clip_l.safetensors"),
                       ("text_encoders", "t5xxl_fp16.safetensors"), ("vae", "ae.safetensors")],
    "hunyuan_video_sage3": [("diffusion_models", "hunyuan_video_t2v_720p_bf16.safetensors"),
                            ("text_encoders", "clip_l.safetensors"),
                            ("text_encoders", "llava_llama3_fp8_scaled.safetensors"),
                            ("vae", "hunyuan_video_vae_bf16.safetensors")],
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """/object_info-shaped registry, with empty stand-ins for the model files so the loaders' combos list them."""
    from tests.support.node_registry import comfy_nodes, object_info

    comfy_nodes()
    import folder_paths

    models = tmp_path_factory.mktemp("models")
    added = []
    for folder, name in {f for files in EXPECTED_MODELS.values() for f in files}:
        (models / folder).mkdir(exist_ok=True)
        (models / folder / name).touch()
        if str(models / folder) not in folder_paths.get_folder_paths(folder):
            folder_paths.add_model_folder_path(folder, str(models / folder))
            added.append((folder, str(models / folder)))
    yield object_info()
    for folder, path in added:  # leave ComfyUI's global folder table as other tests found it
        folder_paths.folder_names_and_paths[folder][0].remove(path)


@pytest.mark.parametrize("name", bw.NAMES)
def test_workflow_fits_the_registry(name, registry):
    assert check(bw.load(name), registry) == []


@pytest.mark.parametrize("name", bw.NAMES)
def test_loaders_ask_for_the_documented_files(name):
    assert bw.model_files(bw.load(name)) == EXPECTED_MODELS[name]


@pytest.mark.parametrize("name", bw.NAMES)
def test_flat_ui_format_with_registry_ids_on_our_nodes(name):
    workflow = bw.load(name)
    assert workflow["version"] == 0.4 and not workflow.get("definitions", {}).get("subgraphs")
    ours = [n for n in workflow["nodes"] if n["type"] in bw.PACK_NODES]
    assert {n["type"] for n in ours} == {"Sage3AttentionPatch", "Sage3AttentionReport"}
    assert all(n["properties"]["cnr_id"] == "comfyui-sage3-attention" for n in ours)
    core = [n for n in workflow["nodes"] if n["type"] not in bw.PACK_NODES | VIRTUAL_NODES]
    assert all(n["properties"]["cnr_id"] == "comfy-core" for n in core)
    assert all(n["mode"] == 0 for n in workflow["nodes"])


def _source(workflow, node, input_name):
    """(source node, output slot) feeding `input_name` of `node`."""
    link_id = next(slot["link"] for slot in node["inputs"] if slot["name"] == input_name)
    link = next(link for link in workflow["links"] if link[0] == link_id)
    return next(n for n in workflow["nodes"] if n["id"] == link[1]), link[2]


def _model_chain(workflow, node):
    """Node types on the MODEL path from the loader to `node`'s model input, loader first."""
    chain = []
    while "model" in {slot["name"] for slot in node.get("inputs", [])}:
        node, _ = _source(workflow, node, "model")
        chain.insert(0, node["type"])
    return chain


def test_flux_patch_sits_between_loader_and_sampler_and_report_reads_the_sampler():
    workflow = bw.load("flux_dev_sage3")
    sampler = bw.nodes_of(workflow, "KSampler")[0]
    assert _model_chain(workflow, sampler) == ["UNETLoader", "Sage3AttentionPatch"]
    report = bw.nodes_of(workflow, "Sage3AttentionReport")[0]
    assert _source(workflow, report, "samples") == (sampler, 0)
    assert _model_chain(workflow, report) == ["UNETLoader", "Sage3AttentionPatch"]
    assert bw.nodes_of(workflow, "EmptySD3LatentImage")[0]["widgets_values"] == [1024, 1024, 1]


def test_hunyuan_patch_sits_before_model_sampling_and_guider():
    workflow = bw.load("hunyuan_video_sage3")
    guider = bw.nodes_of(workflow, "BasicGuider")[0]
    assert _model_chain(workflow, guider) == ["UNETLoader", "Sage3AttentionPatch", "ModelSamplingSD3"]
    sampler = bw.nodes_of(workflow, "SamplerCustomAdvanced")[0]
    report = bw.nodes_of(workflow, "Sage3AttentionReport")[0]
    assert _source(workflow, report, "samples") == (sampler, 0)
    assert _model_chain(workflow, report) == _model_chain(workflow, guider)  # the MODEL the sampler runs


def _corrupt(name, edit):
    workflow = copy.deepcopy(bw.load(name))
    edit(workflow)
    return workflow


def _node(workflow, node_type):
    return bw.nodes_of(workflow, node_type)[0]


def _disconnect(workflow, node_type, input_name):
    """Removes the link into one input at both ends, as deleting a wire in the UI does."""
    slot = next(s for s in _node(workflow, node_type)["inputs"] if s["name"] == input_name)
    link_id, slot["link"] = slot["link"], None
    workflow["links"] = [link for link in workflow["links"] if link[0] != link_id]
    for node in workflow["nodes"]:
        for out in node.get("outputs", []):
            out["links"] = [i for i in out.get("links") or [] if i != link_id]


CORRUPTIONS = {
    "combo value not offered": (lambda w: _node(w, "Sage3AttentionPatch")["widgets_values"].__setitem__(0, "fp3"),
                                "'fp3' is not one of its 4 options"),
    "int above max": (lambda w: _node(w, "KSampler")["widgets_values"].__setitem__(2, 10001), "above max 10000"),
    "float below min": (lambda w: _node(w, "FluxGuidance")["widgets_values"].__setitem__(0, -1.0), "below min 0.0"),
    "string where int": (lambda w: _node(w, "EmptySD3LatentImage")["widgets_values"].__setitem__(0, "1024"),
                         "is not INT"),
    "widget count": (lambda w: _node(w, "KSampler")["widgets_values"].pop(1), "6 widget values, the node has 7"),
    "unknown node type": (lambda w: _node(w, "Sage3AttentionPatch").__setitem__("type", "Sage3AttentionPatcher"),
                          "type Sage3AttentionPatcher is not registered"),
    "link type": (lambda w: w["links"][0].__setitem__(5, "CLIP"), "type CLIP is not node 1's output 0"),
    "dangling link end": (lambda w: w["links"][0].__setitem__(4, 3), "does not point back to it"),
    "missing model file": (lambda w: _node(w, "UNETLoader")["widgets_values"].__setitem__(0, "flux1-schnell.sft"),
                           "'flux1-schnell.sft' is not one of"),
    "unconnected socket": (lambda w: _disconnect(w, "VAEDecode", "samples"), "required input samples is not connected"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_checker_rejects_corrupted_copy(kind, registry):
    edit, message = CORRUPTIONS[kind]
    problems = check(_corrupt("flux_dev_sage3", edit), registry)
    assert any(message in p for p in problems), problems

