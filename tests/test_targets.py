"""Target profiles: every built-in loads, round-trips, and is checked; bad profiles are UserErrors
naming the file and key; QSpec checks downgrade with a reason; Vela facts match Vela itself."""

from __future__ import annotations

import configparser
import dataclasses
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from edgeres.errors import UserError
from edgeres.qtypes import QSpec
from edgeres.targets import (
    Target,
    list_targets,
    load_target,
    target_names,
    targets_dir,
)
from edgeres.targets_table import render_targets_table

EXPECTED = {
    "arm-cpu-tflite",
    "arm-cpu-onnx",
    "x86-cpu-onnx",
    "npu-qnn-htp",
    "npu-int8-per-tensor",
    "ethos-u55-128",
    "ethos-u65-256",
    "cortex-m4",
    "cortex-m7",
}
NAMES = target_names()


def test_builtin_names() -> None:
    assert set(NAMES) >= EXPECTED


@pytest.mark.parametrize("name", NAMES)
def test_profile_loads_and_round_trips(name: str, tmp_path: Path) -> None:
    t = load_target(name)
    assert t.name == name
    assert Target.from_json(json.loads(json.dumps(t.to_json()))) == t
    assert Target.from_toml(t.to_toml()) == t
    saved = t.save(tmp_path / f"{name}.toml")
    assert load_target(saved) == t
    assert load_target(str(saved)) == t


@pytest.mark.parametrize("name", NAMES)
def test_target_honours_its_own_qspecs(name: str) -> None:
    t = load_target(name)
    for bits in t.weights.bits:
        for depthwise in (False, True):
            spec = t.weight_qspec(bits, depthwise)
            assert spec.bits == bits and spec.symmetric == t.weights.symmetric
            assert t.check_qspec(spec, layer="l", depthwise=depthwise) == (spec, None)
    for bits in t.activations.bits:
        spec = t.activation_qspec(bits)
        assert spec.axis is None and spec.signed == t.activations.signed
        assert t.check_activation_qspec(spec, tensor="x") == (spec, None)


def test_requested_profile_facts() -> None:
    tfl = load_target("arm-cpu-tflite")
    w = tfl.weight_qspec(8)
    assert (w.qmin, w.qmax, w.axis) == (-127, 127, 0)
    assert tfl.activation_qspec(8) == QSpec(8, True, False, None, False)
    assert (tfl.io_dtype, tfl.bias_bits, tfl.format, tfl.runtime) == (
        "int8",
        32,
        "tflite",
        "litert-xnnpack",
    )
    onnx = load_target("arm-cpu-onnx")
    assert (onnx.activation_qspec(8).qmin, onnx.activation_qspec(8).qmax) == (0, 255)
    assert onnx.io_dtype == "float32"
    qnn = load_target("npu-qnn-htp")
    assert qnn.activation_qspec(16) == QSpec(16, False, False, None, False)
    pt = load_target("npu-int8-per-tensor")
    assert not pt.weight_qspec(8).per_channel and not pt.weight_qspec(8, depthwise=True).per_channel
    m4, m7 = load_target("cortex-m4"), load_target("cortex-m7")
    assert m4.memory.sram_bytes == 640 * 1024 and m7.memory.sram_bytes == 512 * 1024
    assert m7.memory.arena_bytes < m7.memory.sram_bytes
    assert m4.memory.flash_bytes == m7.memory.flash_bytes == 2 * 1024 * 1024


def test_unknown_target_lists_known_names() -> None:
    with pytest.raises(UserError) as e:
        load_target("ethos-u99")
    assert "ethos-u99" in str(e.value)
    for name in NAMES:
        assert name in str(e.value)
    with pytest.raises(UserError, match="not found"):
        load_target("no/such/profile.toml")


# -- bad profiles ------------------------------------------------------------------------------


def _profile_data(name: str = "ethos-u55-128") -> dict:
    return tomllib.loads((targets_dir() / f"{name}.toml").read_text())


def _load_bad(tmp_path: Path, data: dict) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(tomli_w.dumps(data))
    with pytest.raises(UserError) as e:
        load_target(path)
    message = str(e.value)
    assert str(path) in message
    return message


def test_unknown_keys(tmp_path: Path) -> None:
    data = _profile_data()
    data["colour"] = "blue"
    msg = _load_bad(tmp_path, data)
    assert "'colour'" in msg and "unknown key" in msg and "runtime" in msg
    data = _profile_data()
    data["weights"]["bitz"] = [8]
    msg = _load_bad(tmp_path, data)
    assert "'weights.bitz'" in msg and "bits, granularity" in msg


@pytest.mark.parametrize(
    ("path", "value", "key", "allowed"),
    [
        (("format",), "onnxx", "'format'", "onnx, tflite, c"),
        (("family",), "gpu", "'family'", "cpu, npu, mcu"),
        (("weights", "granularity"), ["per-row"], "'weights.granularity[0]'", "per-channel"),
        (("ops", "integer", "ops"), ["conv3d"], "'ops.integer.ops[0]'", "conv2d"),
        (("vela", "accelerator_config"), "ethos-u55-100", "'vela.accelerator_config'", "u55-128"),
        (("weights", "bits"), "8", "'weights.bits'", "a list of"),
        (("weights", "signed"), 1, "'weights.signed'", "true or false"),
        (("limits", "max_rank"), 6, "'limits.max_rank'", "[1, 4]"),
        (("ops", "lowering", "gelu"), "sigmoid-mul", "'ops.lowering.gelu'", "lookup-table"),
    ],
)
def test_wrong_values(tmp_path: Path, path: tuple, value: object, key: str, allowed: str) -> None:
    data = _profile_data()
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    msg = _load_bad(tmp_path, data)
    assert key in msg and allowed in msg


@pytest.mark.parametrize(
    ("path", "key"), [(("runtime",), "'runtime'"), (("weights", "bits"), "'weights.bits'")]
)
def test_missing_fields(tmp_path: Path, path: tuple, key: str) -> None:
    data = _profile_data()
    node = data
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    msg = _load_bad(tmp_path, data)
    assert key in msg and "missing" in msg


def test_inconsistent_profiles(tmp_path: Path) -> None:
    data = _profile_data("cortex-m7")
    data["format"] = "onnx"
    msg = _load_bad(tmp_path, data)
    assert "'format'" in msg and "runtime 'tflm'" in msg
    data = _profile_data("cortex-m7")
    data["io_dtype"] = "uint8"
    assert "'io_dtype'" in _load_bad(tmp_path, data)
    data = _profile_data("cortex-m7")
    data["ops"]["float"]["ops"] = ["conv2d"]
    assert "listed in ops.integer.ops" in _load_bad(tmp_path, data)
    data = _profile_data("cortex-m7")
    data["memory"]["arena_bytes"] = data["memory"]["sram_bytes"] + 1
    assert "'memory.arena_bytes'" in _load_bad(tmp_path, data)
    data = _profile_data()
    del data["vela"]
    assert "'vela'" in _load_bad(tmp_path, data)
    data = _profile_data("arm-cpu-onnx")
    data["ops"]["lowering"] = {"silu": "lookup-table"}  # the ONNX export writes no tables
    assert "'ops.lowering.silu'" in _load_bad(tmp_path, data)
    data = _profile_data("arm-cpu-tflite")  # uint8 weight storage is an ONNX-file option
    data["weights"]["uint8_storage"] = True
    assert "'weights.uint8_storage'" in _load_bad(tmp_path, data)
    data = _profile_data("arm-cpu-onnx")  # and for 8-bit weights only (int4 stays int4)
    data["weights"]["uint8_storage"] = True
    assert "weights.bits = [8]" in _load_bad(tmp_path, data)
    data = _profile_data()  # the split needs int8 sigmoid and mul kernels
    data["ops"]["integer"]["activations"].remove("sigmoid")
    data["ops"]["float"]["activations"] = ["sigmoid"]
    assert "needs 'sigmoid'" in _load_bad(tmp_path, data)


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('name = "x"\nformat = \n')
    with pytest.raises(UserError, match=re.escape(str(path)) + ": not valid TOML"):
        load_target(path)


# -- QSpec checks ------------------------------------------------------------------------------


def test_depthwise_per_channel_downgrade_reason() -> None:
    t = load_target("npu-int8-per-tensor")
    proposed = load_target("arm-cpu-tflite").weight_qspec(8, depthwise=True)
    spec, reason = t.check_qspec(proposed, layer="features.3.conv.1.0", depthwise=True)
    assert spec == dataclasses.replace(proposed, axis=None)
    assert reason == (
        "layer features.3.conv.1.0: depthwise per-channel not supported on "
        "npu-int8-per-tensor -> per-tensor"
    )
    _, reason = t.check_qspec(proposed, layer="features.1.conv.1")
    assert (
        reason
        == "layer features.1.conv.1: per-channel not supported on npu-int8-per-tensor -> per-tensor"
    )


def test_depthwise_granularity_is_separate() -> None:
    """A target that runs per-channel convs but only per-tensor depthwise convs."""
    base = load_target("arm-cpu-tflite")
    t = dataclasses.replace(
        base, weights=dataclasses.replace(base.weights, depthwise_granularity=("per-tensor",))
    )
    pc = base.weight_qspec(8)
    assert t.check_qspec(pc, layer="conv", depthwise=False) == (pc, None)
    spec, reason = t.check_qspec(pc, layer="dw", depthwise=True)
    assert not spec.per_channel and "depthwise per-channel" in reason
    assert not t.weight_qspec(8, depthwise=True).per_channel and t.weight_qspec(8).per_channel


def test_bits_downgrade_and_errors() -> None:
    t = load_target("ethos-u55-128")
    spec, reason = t.check_qspec(QSpec(4, True, True, 0, True), layer="features.2.conv.0.0")
    assert spec.bits == 8 and spec.per_channel
    assert reason == (
        "layer features.2.conv.0.0: w4 not supported on ethos-u55-128 (allowed weight bits 8) -> w8"
    )
    with pytest.raises(
        UserError, match="^w4 not supported by ethos-u55-128: allowed weight bits 8$"
    ):
        t.weight_qspec(4)
    with pytest.raises(UserError, match="a16 not supported by ethos-u55-128"):
        t.activation_qspec(16)
    spec, reason = t.check_activation_qspec(QSpec(16, False, False), tensor="features.1.out")
    assert spec == t.activation_qspec(8)
    assert "a16 not supported" in reason and "uint not supported" in reason
    qnn = load_target("npu-qnn-htp")
    spec, reason = qnn.check_qspec(QSpec(6, True, True, 0, True), layer="l")
    assert spec.bits == 8 and "w6" in reason  # nearest wider allowed width


@given(
    name=st.sampled_from(NAMES),
    bits=st.integers(2, 16),
    signed=st.booleans(),
    symmetric=st.booleans(),
    per_channel=st.booleans(),
    narrow=st.booleans(),
    depthwise=st.booleans(),
)
def test_check_qspec_always_lands_on_an_allowed_format(
    name: str,
    bits: int,
    signed: bool,
    symmetric: bool,
    per_channel: bool,
    narrow: bool,
    depthwise: bool,
) -> None:
    t = load_target(name)
    asked = QSpec(bits, signed, symmetric, 0 if per_channel else None, narrow)
    spec, reason = t.check_qspec(asked, layer="l", depthwise=depthwise)
    assert spec.bits in t.weights.bits
    gran = "per-channel" if spec.per_channel else "per-tensor"
    assert gran in t.weight_granularities(depthwise)
    assert t.check_qspec(spec, layer="l", depthwise=depthwise) == (spec, None)
    assert (reason is None) == (spec == asked)
    act, act_reason = t.check_activation_qspec(asked, tensor="x")
    assert act.bits in t.activations.bits and act.axis is None
    assert (act_reason is None) == (act == asked)


# -- op set ------------------------------------------------------------------------------------


def test_placement() -> None:
    pt = load_target("npu-int8-per-tensor")
    assert pt.placement("conv2d") == "integer"
    assert pt.placement("matmul") == "host"
    assert pt.placement("layernorm") == "float"
    assert pt.placement("act", "relu6") == "integer" and pt.placement("act", "gelu") == "host"
    m7 = load_target("cortex-m7")
    # TFLite Micro has no GELU kernel, but the exact int8 lookup table (CAST, ADD, GATHER) that
    # TFLite exports write for it runs there (test_export_tflite's gelu_lut case, under TFLM)
    assert m7.placement("act", "gelu") == "integer"
    assert m7.fuses("relu6") and m7.fuses("none") and not m7.fuses("gelu")
    for t in list_targets():
        assert t.placement("conv2d") == "integer" and t.placement("add") == "integer"


# -- cross-checks against the installed runtimes ------------------------------------------------


def _vela_targets() -> list[Target]:
    return [t for t in list_targets() if t.runtime == "vela"]


def test_vela_profiles_match_installed_vela(tmp_path: Path) -> None:
    pytest.importorskip("ethosu.vela", reason="ethos-u-vela not installed (extra 'mcu')")
    from ethosu.vela.architecture_features import CONFIG_FILES_PATH, Accelerator

    subprocess.run(
        [sys.executable, "-m", "ethosu.vela", "--supported-ops-report"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        timeout=120,
    )
    doc = (tmp_path / "SUPPORTED_OPS.md").read_text()
    u55_65 = doc.split("## Ethos-U55 and Ethos-U65 TFLite Summary Table")[1].split("\n## ")[0]
    npu_ops = set(re.findall(r"^\| ([A-Z0-9_]+) \|", u55_65, re.M))
    assert {"CONV_2D", "DEPTHWISE_CONV_2D"} <= npu_ops
    constraints = doc.split("## Ethos-U55 and Ethos-U65 Specific Operator constraints")[1]
    constraints = constraints.split("## Ethos-U85")[0]
    ini = configparser.ConfigParser()
    ini.read(Path(CONFIG_FILES_PATH) / Path(_vela_targets()[0].vela.config))
    assert len(_vela_targets()) >= 2
    for t in _vela_targets():
        assert t.vela.accelerator_config in Accelerator.member_list()
        assert ini.has_section(f"System_Config.{t.vela.system_config}")
        assert ini.has_section(f"Memory_Mode.{t.vela.memory_mode}")
        assert set(t.vela.npu_ops) <= npu_ops, set(t.vela.npu_ops) - npu_ops
        assert t.weights.bits == (8,) and "Weight tensors must be 8-bit precision" in constraints
        assert f"cannot exceed {t.limits.max_weight_sum}" in constraints
        assert f"{t.limits.mean_max_reduced}(Int8)" in constraints
        assert f"less than {t.limits.mean_max_axis + 1}" in constraints
        assert f"height must be less than {t.limits.softmax_max_hw + 1}" in constraints
    per_axis = re.search(r"Per-axis quantization is not supported.\n  - Exceptions: \[(.*)\]", doc)
    assert per_axis and "DEPTHWISE_CONV_2D" in per_axis.group(1)  # depthwise per-channel is fine


@pytest.mark.parametrize("width", [80, 130, 250])
def test_targets_table_lists_every_target(width: int) -> None:
    """Every target's name, runtime and memory in full, on one line, at 80 columns too."""
    targets = list_targets()
    table = render_targets_table(targets, width=width)
    assert table.row_count == len(targets)
    console = Console(record=True, width=width)
    console.print(table)
    lines = console.export_text().splitlines()
    for t in targets:
        row = next(line for line in lines if line.strip("│┃ ").startswith(t.name + " "))
        assert t.runtime in row and "…" not in row, row
        if t.memory.arena_bytes:
            assert str(t.memory.arena_bytes // 1024) in row
    assert any("description" in line for line in lines) == (width >= 150)
