"""keep_blocks parsing, step location from sigmas, and which steps/blocks a policy keeps (no models involved)."""
import pytest
import torch

from tests.support.sage3_pack import load_pack

PACK, _ = load_pack()
block_spec = PACK.nodes.block_spec
policy_mod = PACK.nodes.policy
steps_mod = PACK.nodes.steps


@pytest.mark.parametrize("text, expected", [
    ("", ""),
    ("   ", ""),
    ("double:0-2, single:37, refiner", "double:0-2, single:37, refiner"),
    ("double", "double"),
    (" single : 3 - 5 ,double:7", "single:3-5, double:7"),
    ("double:4-4", "double:4"),
])
def test_keep_blocks_good_syntax(text, expected):
    assert str(block_spec.parse_keep_blocks(text)) == expected


@pytest.mark.parametrize("text, message", [
    ("double:", "cannot read item 1"),
    ("double:0-2,,single:1", "cannot read item 2"),
    ("double:a", "cannot read item 1"),
    ("double:-1", "cannot read item 1"),
    ("double:0-2 single:3", "cannot read item 1"),
    ("3:double", "cannot read item 1"),
    ("double:5-2", "range end 2 is below its start 5"),
    ("refiner:0", "refiner calls have no block index"),
    ("double:0,", "cannot read item 2"),
])
def test_keep_blocks_bad_syntax_names_the_item(text, message):
    with pytest.raises(block_spec.KeepBlocksSyntaxError) as info:
        block_spec.parse_keep_blocks(text)
    assert message in str(info.value)
    if message.startswith("cannot read"):  # syntax errors show the expected form
        assert "'double:0-2, single:37, refiner'" in str(info.value)


def test_keep_blocks_matching():
    sel = block_spec.parse_keep_blocks("double:0-2, single:37, refiner")
    assert sel.matching_rule("double", 0) and sel.matching_rule("double", 2)
    assert not sel.matching_rule("double", 3)
    assert sel.matching_rule("single", 37) and not sel.matching_rule("single", 36)
    assert sel.matching_rule(None, None)  # HunyuanVideo token refiner: no block_type
    assert not sel.matching_rule("single", None)
    everything = block_spec.parse_keep_blocks("single")
    assert everything.matching_rule("single", 0) and everything.matching_rule("single", 99)


def _step(index, total=10):
    schedule = torch.linspace(1.0, 0.0, total + 1)
    return steps_mod.StepLocator().locate({"sigmas": schedule[index:index + 1].clone(), "sample_sigmas": schedule})


def test_step_locator_finds_the_nearest_schedule_step():
    assert _step(0).index == 0 and _step(0).total == 10
    assert _step(9).index == 9
    schedule = torch.tensor([14.6, 7.0, 3.0, 1.0, 0.0])
    locator = steps_mod.StepLocator()
    assert locator.locate({"sigmas": torch.tensor([6.9]), "sample_sigmas": schedule}).index == 1
    assert locator.locate({"sigmas": torch.tensor([0.2]), "sample_sigmas": schedule}).index == 3  # clamped to last
    assert locator.locate({"sample_sigmas": schedule}) is None
    assert locator.locate({}) is None


def test_policy_keeps_first_and_last_steps():
    policy = policy_mod.Policy(keep_first_steps=2, keep_last_steps=1)
    kept = [i for i in range(10) if policy.keeps_step(_step(i))]
    assert kept == [0, 1, 9]
    assert not policy.keeps_step(None)


def test_default_fp4_hybrid_only_raises_fp4():
    hybrid = policy_mod.DEFAULT_FP4_HYBRID
    assert [i for i in range(10) if hybrid.keeps_step(_step(i))] == [0, 9]
    assert hybrid.high_precision == "int8"
    assert hybrid.raises("fp4") and not hybrid.raises("int8") and not hybrid.raises("sdpa")


def test_policy_never_lowers_precision():
    to_int8 = policy_mod.Policy(high_precision="int8")
    assert to_int8.raises("fp4") and not to_int8.raises("int8") and not to_int8.raises("sdpa")
    to_sdpa = policy_mod.Policy(high_precision="sdpa")
    assert to_sdpa.raises("fp4") and to_sdpa.raises("int8") and not to_sdpa.raises("sdpa")
