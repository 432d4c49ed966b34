"""The bundled workflows open cleanly in ComfyUI's real frontend (headless chromium): no missing-node dialog, every node
type registered, the Sage3 patch node's widgets shown with the saved values, and the frontend's own API conversion
agrees with ours. One screenshot per workflow goes to artifacts/ (the test artifact)."""
import copy
import json

import pytest

from tests.support import browser
from tests.support import bundled_workflows as bw
from tests.support.comfy_env import REPO, comfyui_root
from tests.support.comfy_server import ComfyServer
from tests.support.workflow_api import to_api
from tests.support.workflow_spec import widgets

pytestmark = [
    pytest.mark.skipif(comfyui_root() is None, reason="ComfyUI tree missing: run scripts/setup_env.sh"),
    pytest.mark.skipif(not browser.chromium_available(),
                       reason=f"no chromium at {browser.CHROMIUM}: run scripts/install_browser.sh"),
    pytest.mark.timeout(300),
]
ARTIFACTS = REPO / "artifacts"
PATCH_WIDGETS = ["precision", "fallback", "qk_smoothing", "int8_pv", "fused_rope", "fused_norm_mod"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_browser")
    browser.seed_user_settings(base)
    with ComfyServer(base) as srv:
        yield srv


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(browser.CHROMIUM), args=browser.LAUNCH_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(server, chromium):
    page = browser.open_app(chromium, server.url)
    yield page
    page.close()


def _by_type(state, node_type):
    return [n for n in state["nodes"] if n["type"] == node_type]


@pytest.mark.parametrize("name", bw.NAMES)
def test_workflow_opens_without_missing_nodes_and_shows_the_patch_widgets(name, page, server):
    workflow = bw.load(name)
    state = browser.load_workflow(page, workflow)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"browser_{name}.png"))

    assert state["dialogs"] == [] and state["errors"] == [] and page.errors_seen == [], state
    assert sorted(n["id"] for n in state["nodes"]) == sorted(n["id"] for n in workflow["nodes"])
    assert all(n["registered"] and not n["has_errors"] for n in state["nodes"]), state["nodes"]

    (patch,) = _by_type(state, "Sage3AttentionPatch")
    assert [w["name"] for w in patch["widgets"]] == PATCH_WIDGETS
    saved = bw.nodes_of(workflow, "Sage3AttentionPatch")[0]["widgets_values"]
    assert [w["value"] for w in patch["widgets"]] == saved
    declared = {w.name: w.choices or None for w in widgets(server.get("/object_info")["Sage3AttentionPatch"])}
    assert {w["name"]: w["options"] for w in patch["widgets"]} == declared  # (a toggle has no choices: None)
    assert patch["on_screen"] and _by_type(state, "Sage3AttentionReport")[0]["on_screen"]


@pytest.mark.parametrize("name", bw.NAMES)
def test_frontend_builds_the_same_api_prompt_as_our_converter(name, page, server):
    browser.load_workflow(page, bw.load(name))
    theirs = json.loads(page.evaluate(browser.FRONTEND_PROMPT))
    ours = to_api(bw.load(name), server.get("/object_info"))
    strip = lambda prompt: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}  # noqa: E731
    assert strip(ours) == strip(theirs)


def test_missing_node_detection_works_in_this_frontend(page):
    """Control for the checks above: an unknown node type must raise the dialog and show as unregistered."""
    broken = copy.deepcopy(bw.load("flux_dev_sage3"))
    bw.nodes_of(broken, "Sage3AttentionPatch")[0]["type"] = "Sage3AttentionPatchRenamed"
    state = browser.load_workflow(page, broken)
    assert any("Sage3AttentionPatchRenamed" in text for text in state["dialogs"]), state["dialogs"]
    (node,) = _by_type(state, "Sage3AttentionPatchRenamed")
    assert not node["registered"] and node["has_errors"]
