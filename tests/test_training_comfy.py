"""A tiny ComfyUI LoRA training run (comfy_extras/nodes_train.py TrainLoraNode, bf16 autocast, gradient
checkpointing) on a tiny Flux through the Sage3 Attention Patch node at int8 vs at sdpa, from the same seed.

Measured (4 steps, SGD lr 0.1, rank 4; docs/TRAINING.md): per-step losses within 0.07% of SDPA's, every trained
LoRA tensor at cosine >= 0.9998 to SDPA's. Loss curves alone cannot catch a broken attention backward in so few
steps (a run whose q and k get no gradient through attention stays within 0.2%), while its LoRA tensors fall to
cosine 0.83, hence the second check. SGD, not AdamW: Adam's first steps are ~lr * sign(grad), so near-zero
gradient entries flip sign between any two runs and make the LoRA comparison noisy (AdamW: 0.91 vs 0.43).
"""
import inspect

import pytest
import torch

from sage_kernels import logs
from sage_kernels.training import qk_mode
from tests.support.sage3_pack import load_pack
from tests.support.tiny_models import tiny_flux

pytestmark = pytest.mark.interpreter  # CPU models through the Triton interpreter

PACK, COMFY_NODES = load_pack()
PATCH = COMFY_NODES.NODE_CLASS_MAPPINGS["Sage3AttentionPatch"]
STEPS = 4
LOSS_REL_TOL = 0.01
LORA_MIN_COS = 0.999


def _train(precision: str):
    from comfy_extras.nodes_train import TrainLoraNode

    tiny = tiny_flux()
    model = PATCH.execute(tiny.patcher, precision=precision, fallback="error").args[0]
    gen = torch.Generator().manual_seed(3)
    # Two latents: ComfyUI 0.3.75's TrainLoraNode leaves `multi_res` unset for a single latent dict.
    latents = [{"samples": torch.randn(1, 16, 16, 16, generator=gen)} for _ in range(2)]
    positive = [[tiny.inputs["context"], {"pooled_output": tiny.inputs["y"], "guidance": 3.5}]]
    torch.manual_seed(0)  # sigmas, noise and LoRA init come from the global generator
    logs.reset()
    inputs = dict(
        model=[model], latents=latents, positive=[positive], batch_size=[1], steps=[STEPS],
        grad_accumulation_steps=[1], learning_rate=[0.1], rank=[4], optimizer=["SGD"], loss_function=["MSE"],
        seed=[0], training_dtype=["bf16"], lora_dtype=["bf16"], algorithm=["LoRA"], gradient_checkpointing=[True],
        existing_lora=["[None]"])
    if "bucket_mode" in inspect.signature(TrainLoraNode.execute).parameters:  # ComfyUI 0.8 (2026) added it
        inputs["bucket_mode"] = [False]
    result = TrainLoraNode.execute(**inputs)
    _, lora, loss_map, _ = result.args
    training_calls = logs.counts().get(f"train triton {qk_mode()}", 0)  # one per differentiable kernel call
    return loss_map["loss"], lora, training_calls, tiny.attention_calls


@pytest.fixture(scope="module")
def runs():
    return {precision: _train(precision) for precision in ("sdpa", "int8")}


def test_int8_attention_trains_like_sdpa(runs):
    sdpa_loss, sdpa_lora, *_ = runs["sdpa"]
    int8_loss, int8_lora, *_ = runs["int8"]
    assert len(int8_loss) == STEPS and all(l == l for l in int8_loss)  # no NaN
    for a, b in zip(int8_loss, sdpa_loss):
        assert abs(a - b) <= LOSS_REL_TOL * abs(b), (int8_loss, sdpa_loss)
    assert sdpa_lora.keys() == int8_lora.keys()
    trained = 0
    for name, ref in sdpa_lora.items():
        if ref.float().norm() == 0:
            continue  # still at its zero init
        cos = torch.nn.functional.cosine_similarity(ref.float().flatten(), int8_lora[name].float().flatten(), dim=0)
        assert cos >= LORA_MIN_COS, (name, float(cos))
        trained += 1
    assert trained > 100  # every adapter of the model moved


def test_every_attention_call_ran_the_training_kernels(runs):
    *_, int8_calls, per_forward = runs["int8"]
    *_, sdpa_calls, _ = runs["sdpa"]
    assert sdpa_calls == 0
    assert int8_calls == 2 * STEPS * per_forward  # forward + checkpoint recomputation, every step
