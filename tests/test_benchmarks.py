"""benchmarks/adm64_gpu.py runs end to end in its tiny mode (imagenet64-tiny on the CPU), reference harness included."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
from threads import one_thread  # noqa: F401 (autouse)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "adm64_gpu.py"
FIELDS = {"name", "train_images_per_s", "train_mfu", "sampling_images_per_s", "sampling_mfu", "peak_memory_mb",
          "compile_seconds"}


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("adm64_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_gpu_benchmark_runs_tiny_on_the_cpu(script, tmp_path):
    factory = tmp_path / "factory.py"  # a stand-in for the reference network: our tiny U-Net again
    factory.write_text("import torch\nfrom cfgedu.engine.experiment import build_network\n"
                       "from cfgedu.engine.presets import preset\n\n"
                       "def build(batch, device):\n"
                       "    model = build_network(preset('imagenet64-tiny'))\n"
                       "    inputs = torch.randn(batch, 3, 64, 64), torch.zeros(batch), torch.zeros(batch).long()\n"
                       "    return model, inputs\n")
    out = tmp_path / "tiny.json"
    script.main(["--tiny", "--variants", "eager,ema_per_parameter", "--out", str(out),
                 "--reference-factory", f"{factory}:build"])
    script.main(["--tiny", "--variants", "eager", "--out", str(out)])  # measured again: replaced, the rest kept
    report = json.loads(out.read_text())
    assert report["preset"] == "imagenet64-tiny" and report["sampling"]["T"] == 256
    assert [row["name"] for row in report["variants"]] == ["ema_per_parameter", "eager"]
    for row in report["variants"]:
        assert FIELDS <= set(row) and row["train_images_per_s"] > 0 and row["sampling_images_per_s"] > 0
        assert row["train_mfu"] is None and row["compile_seconds"] is None  # no bf16 peak on a CPU; not compiled
    assert report["guided_diffusion_train_images_per_s"] > 0 and report["ours_over_guided_diffusion"] > 0
