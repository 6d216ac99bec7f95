"""Every zoo model: forward, backward, no NaN, shapes; MobileNetV2 against the paper."""

import pytest
import torch

from edgeres.errors import UserError
from edgeres.zoo import create_model, get_entry, list_models

SMALL = [m for m in list_models() if m.endswith("fmnist") or m in ("mobilenet_v2_035", "emo_1m")]


@pytest.mark.parametrize("name", SMALL)
def test_forward_backward(name: str) -> None:
    e = get_entry(name)
    model = create_model(name).train()
    x = torch.randn(2, e.in_chans, e.img_size, e.img_size, requires_grad=True)
    y = model(x)
    assert y.shape == (2, e.num_classes) and torch.isfinite(y).all()
    y.logsumexp(1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_mobilenet_v2_parameter_count_matches_paper() -> None:
    model = create_model("mobilenet_v2_100")
    assert sum(p.numel() for p in model.parameters()) == get_entry("mobilenet_v2_100").paper_params
    assert len(model.state_dict()) == 314


def test_imagenet_weights_load_strictly() -> None:
    model = create_model("mobilenet_v2_100", pretrained="imagenet")
    w = model.features[0][0].weight
    assert w.shape == (32, 3, 3, 3) and float(w.detach().abs().sum()) > 1.0


def test_bad_names_and_files() -> None:
    with pytest.raises(UserError, match="unknown model 'mobilenet_v9'"):
        create_model("mobilenet_v9")
    with pytest.raises(UserError, match="neither a weights name"):
        create_model("mobilenet_v2_100", pretrained="/no/such/file.pth")


def test_unreadable_checkpoint(tmp_path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights"):
        create_model("mobilenet_v2_fmnist", pretrained=bad)
