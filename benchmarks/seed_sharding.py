"""A cell's seeds sharded over the local devices vs on one device, side by side in one process.

On a GPU node every GPU is a device. On a CPU, ``--host-devices N`` splits the host into N XLA
devices (``--xla_force_host_platform_device_count``), which shows whether one sharded program
uses the cores better than one device does. Prints chunk times, the ratio, and whether the
metrics agree.

    python benchmarks/seed_sharding.py --seeds 8 --host-devices 2
"""

import argparse
import os
import sys

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--seeds", type=int, default=8)
parser.add_argument("--host-devices", type=int, default=0, help="CPU only: split the host into N devices")
parser.add_argument("--env", default="Breakout-MinAtar")
parser.add_argument("--env-steps", type=int, default=4_000, help="per seed; chunks of 1,000")
parser.add_argument("--repeats", type=int, default=2, help="timed runs of each variant, alternating")
args = parser.parse_args()
if args.host_devices:
    flag = f"--xla_force_host_platform_device_count={args.host_devices}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}"

import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from plastix.agents import DQNConfig, LoopConfig  # noqa: E402
from plastix.experiments.rl import RLConfig, run_cell, seed_sharding  # noqa: E402
from plastix.interventions import OptimizerConfig  # noqa: E402


def main() -> int:
    loop = LoopConfig(
        env_steps=args.env_steps,
        replay_ratio=1,
        warmup_steps=1_000,
        buffer_size=10_000,
        batch_size=32,
        period=500,
        eval_every=2,
        eval_envs=4,
        eval_steps=500,
    )
    cell = RLConfig(
        env=args.env,
        seeds=args.seeds,
        loop=loop,
        dqn=DQNConfig(optimizer=OptimizerConfig("adam", 1e-4, eps=1.5e-4), target_update_period=500),
        checkpoint_every=0,
    )
    sharding = seed_sharding(args.seeds, 0)
    devices = 1 if sharding is None else sharding.mesh.size
    platform, n_local = jax.devices()[0].platform, len(jax.local_devices())
    print(f"{platform}: {n_local} local devices; {args.seeds} seeds sharded over {devices}")
    if devices == 1:
        print("nothing to compare: one device (give --host-devices on a CPU, or run on a multi-GPU node)")
        return 1
    times = {1: [], 0: []}
    tables = {}
    root = tempfile.mkdtemp()
    try:
        for repeat in range(args.repeats + 1):  # the first round compiles
            for variant in (1, 0):
                path = os.path.join(root, f"{variant}-{repeat}")
                start = time.perf_counter()
                tables[variant] = run_cell(cell, path, devices=variant)
                if repeat:
                    times[variant].append(time.perf_counter() - start)
                shutil.rmtree(path)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    one, sharded = np.median(times[1]), np.median(times[0])
    steps = args.seeds * (args.env_steps + loop.warmup_steps)
    print(f"one device:          {one:7.2f} s per run, {steps / one:8.0f} env-steps/s")
    print(f"sharded over {devices}:     {sharded:7.2f} s per run, {steps / sharded:8.0f} env-steps/s")
    print(f"speed-up {one / sharded:.2f}x")
    a, b = tables[1], tables[0]
    training = [c for c in a.columns if c in ("loss", "train_return", "eval_return") or c.endswith("_fraction")]
    same = all(np.array_equal(a[c].to_numpy(), b[c].to_numpy(), equal_nan=True) for c in training)
    print(f"training columns bit-identical: {same}")
    if not same:  # where the two runs part: float rounding, then RL's chaos
        for c in training:
            x, y = a[c].to_numpy(np.float64), b[c].to_numpy(np.float64)
            differ = ~((x == y) | (np.isnan(x) & np.isnan(y)))
            if differ.any():
                first = a[differ].iloc[0]
                gap = np.nanmax(np.abs(x - y))
                print(f"  {c}: first differs at seed {first.seed} period {first.period}; max |diff| {gap:.3g}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
