"""The microcontroller C arrays, compiled by a real C compiler: the array is the .tflite byte for
byte, 16-byte aligned, and the header's numbers are the manifest's."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeres.cli import main
from edgeres.export.c import c_float, export_c
from edgeres.zoo.models import SHIPPED

CC = shutil.which("cc") or shutil.which("gcc")
PROBE = r"""
#include <stdint.h>
#include <stdio.h>
#include "model_data.h"
#ifndef MODEL_DATA_INPUT_PIXEL_OFFSET
#define MODEL_DATA_INPUT_PIXEL_OFFSET 999u
#endif
int main(int argc, char **argv) {
  FILE *f = fopen(argv[1], "wb");
  fwrite(model_data, 1, model_data_len, f);
  fclose(f);
  printf("{\"arena\": %u, \"in_scale\": %.9g, \"in_zp\": %d, \"out_scale\": %.9g, "
         "\"out_zp\": %d, \"pixel_offset\": %u, \"misaligned\": %d}\n",
         MODEL_DATA_ARENA_BYTES, (double)MODEL_DATA_INPUT_SCALE, MODEL_DATA_INPUT_ZERO_POINT,
         (double)MODEL_DATA_OUTPUT_SCALE, MODEL_DATA_OUTPUT_ZERO_POINT,
         MODEL_DATA_INPUT_PIXEL_OFFSET, (int)((uintptr_t)model_data % 16));
  return 0;
}
"""


def _compile_and_run(bundle: Path, tmp: Path) -> tuple[dict, bytes]:
    (tmp / "probe.c").write_text(PROBE)
    exe = tmp / "probe"
    subprocess.run([CC, "-std=c11", "-Wall", "-Werror", "-I", str(bundle), str(tmp / "probe.c"),
                    str(bundle / "model_data.c"), "-o", str(exe)], check=True,
                   capture_output=True, text=True)
    out = subprocess.run([str(exe), str(tmp / "dump.tflite")], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out), (tmp / "dump.tflite").read_bytes()


@pytest.mark.skipif(CC is None, reason="no C compiler on this machine")
@pytest.mark.skipif(not (SHIPPED / "mobilenet_v2_fmnist.pth").is_file(),
                    reason="the shipped FMNIST weights are not in this checkout")
@pytest.mark.parametrize("mode", ["normalized", "pixels"])
def test_c_arrays_are_the_model_and_the_header_is_the_manifest(tmp_path, mode) -> None:
    out = tmp_path / mode
    assert main(["convert", "mobilenet_v2_fmnist", "-t", "cortex-m7", "--input", mode,
                 "--calib", "fmnist:train@64", "--eval", "fmnist:test@50", "--no-bench",
                 "--out", str(out)]) == 0
    got, data = _compile_and_run(out, tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    (inp,), (outp,) = m["inputs"], m["outputs"]
    assert data == (out / "model.tflite").read_bytes() and got["misaligned"] == 0
    assert got["arena"] == m["tflm_arena_bytes"] > 0
    assert np.float32(got["in_scale"]) == np.float32(inp["scale"])
    assert np.float32(got["out_scale"]) == np.float32(outp["scale"])
    assert (got["in_zp"], got["out_zp"]) == (inp["zero_point"], outp["zero_point"])
    assert got["pixel_offset"] == inp.get("pixel_offset", 999)


@pytest.mark.parametrize("value", [1.0, 0.0123456789, 3.0e-5, 255.0, 1 / 3])
def test_c_float_is_a_c_literal_of_the_same_float32(value) -> None:
    text = c_float(float(np.float32(value)))
    assert text.endswith("f") and any(c in text for c in ".e")
    assert np.float32(float(text[:-1])) == np.float32(value)


def test_export_c_refuses_what_is_not_a_tflite(tmp_path) -> None:
    from edgeres.errors import UserError

    with pytest.raises(UserError, match="TFL3"):
        export_c(b"not a flatbuffer", tmp_path, 0, "m", "cortex-m7", "0")
