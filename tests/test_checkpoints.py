"""vggrpo.geometry.checkpoints.load_weights_into: a checkpoint read into a built model's own
memory, tensor by tensor, as load_state_dict would load it, and refused whole when it does not fit.
(Its peak memory is measured in bench/test_bench_checkpoint.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from vggrpo.geometry.checkpoints import load_weights_into


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 4)
        self.b = nn.Conv2d(2, 3, 3)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


def _source(seed=1):
    torch.manual_seed(seed)
    net = _Net()
    net.steps.fill_(7)
    return net


def _check_loaded(net, source):
    for name, value in source.state_dict().items():
        assert torch.equal(net.state_dict()[name], value), name


@pytest.mark.parametrize("fmt", ["safetensors", "shards", "pt", "wrapped-pth", "legacy-pt"])
def test_a_checkpoint_loads_into_the_model_s_own_memory(tmp_path, fmt):
    source = _source()
    sd = source.state_dict()
    if fmt == "safetensors":
        files = tmp_path / "model.safetensors"
        save_file(sd, str(files))
    elif fmt == "shards":
        keys = sorted(sd)
        files = [tmp_path / "m-1.safetensors", tmp_path / "m-2.safetensors"]
        save_file({k: sd[k] for k in keys[:2]}, str(files[0]))
        save_file({k: sd[k] for k in keys[2:]}, str(files[1]))
    elif fmt == "pt":
        files = tmp_path / "model.pt"
        torch.save(sd, files)
    elif fmt == "wrapped-pth":  # as Any4D's training writes it
        files = tmp_path / "any4d.pth"
        torch.save({"model": sd, "epoch": 3}, files)
    else:  # the pre-zip format cannot be memory-mapped: read whole instead
        files = tmp_path / "old.pt"
        torch.save(sd, files, _use_new_zipfile_serialization=False)
    torch.manual_seed(2)
    net = _Net()
    pointers = {n: p.data_ptr() for n, p in net.named_parameters()}
    assert load_weights_into(net, files) == ([], [])
    _check_loaded(net, source)
    # In place: the model's parameters are the ones it had, now holding the checkpoint.
    assert {n: p.data_ptr() for n, p in net.named_parameters()} == pointers


def test_another_dtype_is_converted_as_load_state_dict_does(tmp_path):
    source = _source()
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
            for k, v in source.state_dict().items()}
    save_file(half, str(tmp_path / "bf16.safetensors"))
    net, reference = _Net(), _Net()
    load_weights_into(net, tmp_path / "bf16.safetensors")
    reference.load_state_dict(half)
    _check_loaded(net, reference)
    assert net.a.weight.dtype == torch.float32


def test_non_strict_returns_what_did_not_match(tmp_path):
    sd = _source().state_dict()
    save_file({**{k: v for k, v in sd.items() if k != "b.bias"}, "extra": torch.ones(1)},
              str(tmp_path / "m.safetensors"))
    net = _Net()
    assert load_weights_into(net, tmp_path / "m.safetensors", strict=False) == \
        (["b.bias"], ["extra"])
    assert torch.equal(net.a.weight, sd["a.weight"])
    with pytest.raises(ValueError, match=r"do not fit the model: missing \['b.bias'\]; unexpected "
                                         r"\['extra'\]"):
        load_weights_into(_Net(), tmp_path / "m.safetensors")


def test_a_checkpoint_that_does_not_fit_is_refused_before_anything_is_written(tmp_path):
    sd = _source().state_dict()
    save_file({**sd, "b.weight": torch.zeros(3, 2, 5, 5)}, str(tmp_path / "shape.safetensors"))
    net = _Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match=r"VGGT weights .* do not fit the model: b.weight is "
                                         r"\[3, 2, 5, 5\], the model's \[3, 2, 3, 3\]"):
        load_weights_into(net, tmp_path / "shape.safetensors", what="VGGT")
    save_file({f"model.{k}": v for k, v in sd.items()}, str(tmp_path / "prefixed.safetensors"))
    with pytest.raises(ValueError, match="match none of the model's 5 tensors"):
        load_weights_into(net, tmp_path / "prefixed.safetensors", strict=False)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def _safetensors_bytes(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


@pytest.mark.parametrize("content,expected", [
    (b"\x00" * 4, "is not a safetensors file"),
    ((10 ** 12).to_bytes(8, "little") + b"{}", "is not a safetensors file"),
    (b"\x05\x00\x00\x00\x00\x00\x00\x00{nope", "is not a safetensors file"),
    (_safetensors_bytes({"a.weight": {"dtype": "F32", "shape": [4, 5],
                                      "data_offsets": [0, 80]}}, b"\x00" * 40),
     "tensor 'a.weight' does not fit the file"),
    (_safetensors_bytes({"a.weight": {"dtype": "F32", "shape": [4, 5],
                                      "data_offsets": [0, 40]}}, b"\x00" * 40),
     "tensor 'a.weight' does not fit the file"),
    (_safetensors_bytes({"a.weight": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}},
                        b"\x00" * 8), "malformed or unsupported header entry"),
], ids=["short", "huge-header", "bad-json", "past-the-end", "size-mismatch", "dtype"])
def test_a_broken_safetensors_file_is_one_clear_error(tmp_path, content, expected):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=expected):
        load_weights_into(_Net(), path, strict=False)


class _NotAWeight:
    pass


def test_a_pickle_of_other_objects_is_never_unpickled(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"model": _source().state_dict(), "obj": _NotAWeight()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_weights_into(_Net(), path)
