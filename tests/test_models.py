import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from skillray.models import decoder_blocks, normalize_layers


def test_default_layers_skip_first_and_last():
    assert normalize_layers(None, 30) == list(range(1, 29))
    assert normalize_layers(None, 2) == [0, 1]


def test_negative_indices_and_dedup():
    assert normalize_layers([-1, 0, 29, 5], 30) == [0, 5, 29]


@pytest.mark.parametrize("bad", [30, -31])
def test_out_of_range_names_layer_and_depth(bad):
    with pytest.raises(ValueError, match=rf"layer {bad} out of range for a 30-block model"):
        normalize_layers([bad], 30)


def test_empty_layer_list_is_an_error():
    with pytest.raises(ValueError, match="empty list"):
        normalize_layers([], 30)


@pytest.mark.parametrize(
    "model",
    [
        lambda: LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2)),
        lambda: GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=3, n_head=2)),
        lambda: GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2)),
    ],
)
def test_decoder_blocks_per_family(model):
    m = model()
    blocks = decoder_blocks(m)
    assert len(blocks) == 3
    # Block i's output is hidden_states[i + 1] for every block before the last (which is pre-norm).
    seen = {}
    h = blocks[0].register_forward_hook(lambda mod, i, o: seen.setdefault(0, o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        out = m(torch.arange(5)[None], output_hidden_states=True)
    h.remove()
    torch.testing.assert_close(seen[0], out.hidden_states[1])


def test_unknown_architecture_names_the_class():
    class Weird(torch.nn.Module):
        config = type("C", (), {"model_type": "weird"})()

    with pytest.raises(ValueError, match="Weird.*model_type='weird'"):
        decoder_blocks(Weird())


_ALLOC_LOOP = r"""
import json, os, torch
from skillray.models import keep_freed_memory
kept = keep_freed_memory()
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
xs = [torch.empty(2 << 20).fill_(1.0) for _ in range(25)]  # 25 activation-sized blocks of 8 MiB
held = rss() - before
del xs
print(json.dumps({"kept": kept, "held_mb": held >> 20, "after_free_mb": (rss() - before) >> 20}))
"""


def test_keep_freed_memory_keeps_activation_blocks_mapped():
    """With glibc's defaults, blocks this size are mappings of their own, unmapped when freed, so the next
    micro-batch faults their pages in again (6-9 M faults in a 76-s forward, docs/architecture.md). With
    keep_freed_memory (what load_model applies) they come from the heap and stay mapped for reuse."""
    import json
    import os
    import subprocess
    import sys

    def run(mode):
        env = {**os.environ, "SKILLRAY_MALLOC": mode}
        out = subprocess.run([sys.executable, "-c", _ALLOC_LOOP], env=env, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    default, kept = run("default"), run("keep")
    assert default["kept"] is False and kept["kept"] is True
    assert default["held_mb"] >= 190 and kept["held_mb"] >= 190  # 200 MiB touched either way
    assert default["after_free_mb"] < 20, default  # given back to the kernel
    assert kept["after_free_mb"] >= 190, kept  # kept for the next batch
