#!/usr/bin/env bash
# GPU check of run_trial: CIFAR-shaped ResNet-20, fp32 vs bf16-mixed + channels_last, and the
# ratio to a hand-written loop on the same model/data/batch. Needs only torch + lightning +
# scikit-learn + numpy + safetensors (no ray/optuna/sqlalchemy, no install of this package).
#
#   bash bench/gpu_check.sh              # defaults: 50k synthetic 3x32x32 images, batch 512
#   GPU_CHECK_N=5000 GPU_CHECK_EPOCHS=2 GPU_CHECK_REPEATS=1 bash bench/gpu_check.sh   # smoke
#
# Env: PYTHON (interpreter), GPU_CHECK_N (training images), GPU_CHECK_EPOCHS, GPU_CHECK_REPEATS,
# GPU_CHECK_BATCH, OUT (folder for gpu_check.json; default bench/results).
# ImageNet-shaped step (ResNet-50 and ConvNeXt-T at 224x224, on by default with CUDA):
# GPU_CHECK_IMAGENET (1/0), GPU_CHECK_224_N (images, default 4096), GPU_CHECK_224_BATCH (128),
# GPU_CHECK_224_EPOCHS (3), GPU_CHECK_224_SIZE (224). CPU smoke of the whole script:
#   GPU_CHECK_N=5000 GPU_CHECK_EPOCHS=2 GPU_CHECK_REPEATS=1 GPU_CHECK_IMAGENET=1 \
#   GPU_CHECK_224_N=160 GPU_CHECK_224_BATCH=16 GPU_CHECK_224_EPOCHS=2 GPU_CHECK_224_SIZE=64 \
#   bash bench/gpu_check.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
cd "$ROOT"
"$PY" - <<'PYEOF'
"""run_trial on a CIFAR-shaped ResNet-20: fp32 vs bf16-mixed + channels_last vs hand loop."""
import json
import os
import sys
import time

import numpy as np
import torch

from bench.throughput import compare, print_table, resnet20
from workers import TrainConfig, run_trial

n = int(os.environ.get("GPU_CHECK_N", "50000"))
epochs = int(os.environ.get("GPU_CHECK_EPOCHS", "4"))
repeats = int(os.environ.get("GPU_CHECK_REPEATS", "2"))
batch = int(os.environ.get("GPU_CHECK_BATCH", "512"))
out_dir = os.environ.get("OUT") or os.path.join("bench", "results")

print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}", flush=True)
if torch.cuda.is_available():
    print(f"device: {torch.cuda.get_device_name(0)}, bf16: {torch.cuda.is_bf16_supported()}")

# 1. synthetic CIFAR-shaped data (NHWC uint8, 10 classes), written once to /tmp
path = f"/tmp/resnas_gpu_check_{n}.npz"
if not os.path.exists(path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=n)
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    x[np.arange(n), y, :, :] = 255  # a learnable cue: the label's row is bright
    np.savez(path, x_train=x, y_train=y)
base = TrainConfig(
    dataset=f"npz:{path}", val_fraction=0.1, epochs=epochs, batch_size=batch,
    keep_weights=False, lr=0.2,
)
spec = resnet20(in_channels=3, num_classes=10)

# 2. one plain trial first: does it complete, and with what it reports
t = time.perf_counter()
probe = run_trial({"spec": spec.to_dict(), "config": base.with_(epochs=2).to_dict()})
print(f"probe trial: {probe.state} {probe.reason or ''} acc={probe.val_accuracy} "
      f"device={probe.device} setup={probe.setup_s}s duration={probe.duration_s:.2f}s "
      f"latency b1={probe.latency_ms}ms b256={probe.latency_ms_batch}ms "
      f"peak={probe.peak_memory_mb}MB", flush=True)
if probe.state != "complete":
    print(probe.traceback)
    sys.exit(1)

# 3. fp32 vs bf16-mixed + channels_last, each against the hand loop
rows = [
    compare(spec, base.with_(precision="32", channels_last=False), repeats, "resnet20 fp32"),
    compare(spec, base.with_(precision="bf16-mixed", channels_last=True), repeats,
            "resnet20 bf16+chlast"),
]
print_table(rows)
if torch.cuda.is_available():
    print(f"bf16+channels_last speed-up over fp32 (run_trial): "
          f"{rows[1]['run_trial_samples_per_s'] / rows[0]['run_trial_samples_per_s']:.2f}x")

# 3b. ImageNet-shaped: ResNet-50 and ConvNeXt-T at 224x224 (synthetic, 10 classes), fp32 vs
#     bf16-mixed + channels_last, each against the hand loop (goals: bf16 >= 2x fp32 on
#     ResNet-50; run_trial/hand >= 0.95; fixed cost per trial <= 0.3 s)
imagenet_rows = []
if os.environ.get("GPU_CHECK_IMAGENET", "1" if torch.cuda.is_available() else "0") == "1":
    from search_spaces import zoo

    n224 = int(os.environ.get("GPU_CHECK_224_N", "4096"))
    batch224 = int(os.environ.get("GPU_CHECK_224_BATCH", "128"))
    epochs224 = int(os.environ.get("GPU_CHECK_224_EPOCHS", "3"))
    side = int(os.environ.get("GPU_CHECK_224_SIZE", "224"))
    path224 = f"/tmp/resnas_gpu_check_{side}_{n224}.npz"
    if not os.path.exists(path224):
        rng = np.random.default_rng(1)
        y224 = rng.integers(0, 10, size=n224)
        x224 = rng.integers(0, 256, size=(n224, side, side, 3), dtype=np.uint8)
        band = side // 10
        for c in range(10):  # a learnable cue: the label's band of rows is bright
            x224[y224 == c, band * c : band * (c + 1)] = 255
        np.savez(path224, x_train=x224, y_train=y224)
        del x224
    base224 = TrainConfig(
        dataset=f"npz:{path224}", val_fraction=0.1, epochs=epochs224, batch_size=batch224,
        keep_weights=False,
    )
    recipes = {  # each family's usual optimiser
        "resnet50": base224.with_(lr=0.1),
        "convnext_tiny": base224.with_(optimizer="adamw", lr=1e-3, weight_decay=0.05),
    }
    for name, recipe in recipes.items():
        net = zoo.get(name, num_classes=10)
        for precision, chlast in (("32", False), ("bf16-mixed", True)):
            label = f"{name} {'fp32' if precision == '32' else 'bf16+chlast'} {side}"
            imagenet_rows.append(compare(
                net, recipe.with_(precision=precision, channels_last=chlast), repeats, label))
    print_table(imagenet_rows)
    for i in range(0, len(imagenet_rows), 2):
        fp32, bf16 = imagenet_rows[i], imagenet_rows[i + 1]
        print(f"{fp32['label'].split()[0]}: bf16+channels_last over fp32 (run_trial) "
              f"{bf16['run_trial_samples_per_s'] / fp32['run_trial_samples_per_s']:.2f}x",
              flush=True)

# 4. a candidate too big for the card: a clean "out_of_memory" failure, and the next trial in the
#    same process still trains (the memory was given back)
oom = None
if torch.cuda.is_available():
    from dataclasses import replace
    huge = replace(spec, stem_width=1024, stages=tuple(
        replace(s, width=1024) for s in spec.stages), name="too-big")
    r = run_trial({"spec": huge.to_dict(),
                   "config": base.with_(epochs=1, batch_size=8192).to_dict()})
    after = run_trial({"spec": spec.to_dict(), "config": base.with_(epochs=1).to_dict()})
    oom = {"state": r.state, "reason": r.reason, "after_state": after.state,
           "after_acc": after.val_accuracy,
           "allocated_mb_after": torch.cuda.memory_allocated() / 2**20}
    print(f"oversized candidate: {r.state} ({r.reason}); next trial: {after.state} "
          f"acc={after.val_accuracy}; allocated now {oom['allocated_mb_after']:.0f} MB", flush=True)

# 5. the training path must not have loaded the service's heavy dependencies
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"optuna", "ray", "sqlalchemy"})
print(f"heavy modules loaded: {heavy or 'none'}")
os.makedirs(out_dir, exist_ok=True)
with open(os.path.join(out_dir, "gpu_check.json"), "w") as f:
    json.dump({"n": n, "epochs": epochs, "batch": batch, "rows": rows,
               "imagenet_rows": imagenet_rows,
               "probe": probe.to_dict(), "oom": oom, "heavy": heavy,
               "torch": torch.__version__,
               "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}, f, indent=2)
bad_oom = oom is not None and (oom["reason"] != "out_of_memory" or oom["after_state"] != "complete")
sys.exit(1 if heavy or bad_oom else 0)
PYEOF
