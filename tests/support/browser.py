"""Drive ComfyUI's own frontend (comfyui-frontend-package) in Debian's headless chromium through Playwright.

Never downloads a browser: the executable is $SAGE3_CHROMIUM or /usr/bin/chromium (scripts/install_browser.sh).
State is read from the app's JS objects (window.app, window.LiteGraph), which the frontend exposes for extensions,
and from the DOM for dialogs and error toasts.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

CHROMIUM = Path(os.environ.get("SAGE3_CHROMIUM", "/usr/bin/chromium"))
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1600, "height": 900}
# Fresh-user settings: skip the first-run template browser (it would cover the canvas) and the minimap.
USER_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}

APP_READY = "() => !!(window.app && window.app.graph && window.LiteGraph && window.LiteGraph.registered_node_types)"

# Everything a test needs to know about the loaded graph, as plain JSON.
GRAPH_STATE = """() => {
  const canvas = app.canvas.canvas.getBoundingClientRect();
  const nodes = app.graph._nodes.map((n) => {
    const [x, y] = app.canvas.ds.convertOffsetToCanvas([n.pos[0], n.pos[1]]);
    return {
      id: n.id, type: n.type, registered: !!LiteGraph.registered_node_types[n.type], has_errors: !!n.has_errors,
      widgets: (n.widgets || []).map((w) => ({name: w.name, value: w.value, options: (w.options || {}).values || null})),
      on_screen: x >= 0 && y >= 0 && x < canvas.width && y < canvas.height,
    };
  });
  const visible = (el) => { const r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0; };
  const dialogs = [...document.querySelectorAll('[role="dialog"], .p-dialog')].filter(visible).map((d) => d.innerText);
  const errors = [...document.querySelectorAll('.p-toast-message-error')].filter(visible).map((t) => t.innerText);
  return {nodes, dialogs, errors};
}"""

LOAD = "async (workflow) => { await app.loadGraphData(workflow); }"
# The frontend's own API conversion of the current graph (what its Run button queues).
FRONTEND_PROMPT = "async () => JSON.stringify((await app.graphToPrompt()).output)"


def chromium_available() -> bool:
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)


def seed_user_settings(base: Path) -> None:
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(USER_SETTINGS))


def open_app(browser, url: str, timeout_ms: int = 120_000):
    """A new page with the app loaded; page errors are collected in page.errors_seen."""
    page = browser.new_page(viewport=VIEWPORT)
    page.errors_seen = []
    page.on("pageerror", lambda exc: page.errors_seen.append(str(exc)))
    page.goto(url)
    page.wait_for_function(APP_READY, timeout=timeout_ms)
    page.wait_for_load_state("networkidle")
    return page


def load_workflow(page, workflow: dict) -> dict:
    """Loads a UI-format workflow the way the app opens a file; returns GRAPH_STATE afterwards."""
    page.errors_seen.clear()
    page.evaluate(LOAD, workflow)
    page.wait_for_timeout(500)  # dialogs and toasts open asynchronously after loadGraphData resolves
    return page.evaluate(GRAPH_STATE)
