"""What training on each defect kind does to the proxy's loss on the clean val pairs: the quantity every Alchemist
signal estimates (the meta-gradient of the val loss with respect to a row's weight), measured directly by
counterfactual fine-tuning. Issue 12: if training on a kind does not raise the val loss, no meta-gradient signal
on this proxy can learn to drop it.

    .venv/bin/python benchmarks/kind_val_effect.py [--data data] [--threads 2] [--seeds 0 1] [--steps 300] [--share 0.25]
        [--env openclipart] [--kinds text_banner corner_logo] [--set rater.proxy.space=pixels ...]

From a warm-up prior trained as the rater's θ̂ is (conf's proxy, warm-up steps and learning rate, trained on the whole
pool), each arm fine-tunes a copy for --steps steps on batches of which a --share come from one kind's rows and the
rest from clean pool rows; the `clean` arm takes every row from the clean rows, and the `clean_subset` arm draws its
share from a fixed random set of clean rows as large as a kind (the control: a kind's few rows are seen many times,
which alone raises the val loss; exact and near duplicates, copies of clean pairs, land there too). All arms of a seed
draw the same clean rows, the same noise and the same caption dropout, so they differ only by the kind's rows. Printed
per kind: the val loss (own captions, fixed timesteps and noise) minus the clean arm's, relative to it, the mean and
per seed, the mean minus the clean_subset control's; and the val caption sensitivity of each arm (how much of the val
loss the captions explain). Needs a finished `make run`; the `defect` side column is read here for evaluation only.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from alchemist_kedro.models.proxy import ProxyConfig, build_proxy, per_sample_loss
from alchemist_kedro.pipelines.rater.nodes import build_rater_inputs
from alchemist_kedro.training.diagnostics import caption_sensitivity
import rater_signals  # benchmarks/
from rater_signals import at, conf_parameters, partitions, pool_defects, set_dotted
from reference_signals import fit

ROOT = Path(__file__).resolve().parents[1]


def val_loss(model, val, k: int = 8) -> float:
    with torch.no_grad():
        return float(per_sample_loss(model, val.images, val.tokens, val.mask, val.uids, num_timesteps=k).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning steps per arm")
    ap.add_argument("--share", type=float, default=0.25, help="share of each batch drawn from the kind's rows")
    ap.add_argument("--env", default=None, help="read the outputs of `kedro run --env ENV` (e.g. openclipart)")
    ap.add_argument("--kinds", nargs="+", default=None, help="only these defect kinds (default: every kind)")
    ap.add_argument("--set", action="append", default=[], help="dotted conf override, e.g. rater.proxy.space=pixels")
    args = ap.parse_args()
    rater_signals.ENV = args.env
    torch.set_num_threads(args.threads)
    params = {"rater": conf_parameters(args.env)["rater"]}
    for item in args.set:
        set_dotted(params, *item.split("=", 1))
    rp = params["rater"]
    data = Path(args.data)
    inputs = build_rater_inputs(partitions(at(data, "03_primary/samples"), ["uid", "split", "image"]),
                                partitions(at(data, "04_feature/features")), rp)
    config = ProxyConfig(**rp["proxy"])
    pool, val = inputs.pool, inputs.val
    defect = pool_defects(data, pool.uids)
    kinds = sorted(set(defect) - {""})
    counts = {kind: int((defect == kind).sum()) for kind in kinds}
    kinds = [kind for kind in kinds if args.kinds is None or kind in args.kinds]
    clean_rows = np.flatnonzero(defect == "")
    lr, batch, warmup = rp["training"]["proxy_lr"], rp["training"]["batch_size"], rp["training"]["warmup_steps"]
    n_kind = max(1, int(round(args.share * batch)))
    start = time.perf_counter()
    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        base = build_proxy(config, pool.images, tokens=pool.tokens, mask=pool.mask)
        warm = [pool.rows(rng.choice(len(pool), size=batch, replace=False)) for _ in range(warmup)]
        base = fit(base, lambda step: warm[step], warmup, lr, seed, "warmup").train()
        # One clean draw per step, shared by every arm: the arms differ only by the kind's rows.
        clean_draws = [rng.choice(clean_rows, size=batch, replace=False) for _ in range(args.steps)]
        subset = rng.choice(clean_rows, size=int(np.median(list(counts.values()))), replace=False)
        for kind in ["clean", "clean_subset", *kinds]:
            kind_rows = subset if kind == "clean_subset" else np.flatnonzero(defect == kind)
            krng = np.random.default_rng([seed, 7])
            draws = [np.concatenate([clean_draws[s][: batch - n_kind], krng.choice(kind_rows, size=n_kind)])
                     if kind != "clean" else clean_draws[s] for s in range(args.steps)]
            model = fit(copy.deepcopy(base).train(), lambda step: pool.rows(draws[step]), args.steps, lr, seed, "arm")
            sens = caption_sensitivity(model, val.images, val.tokens, val.mask, val.uids, 4, seed)
            rows.append({"seed": seed, "kind": kind, "val_loss": val_loss(model, val),
                         "caption_sensitivity": sens["caption_sensitivity"]})
    table = pd.DataFrame(rows)
    clean = table[table["kind"] == "clean"].set_index("seed")["val_loss"]
    table["rel_change_%"] = 100 * (table["val_loss"] / table["seed"].map(clean) - 1)
    wide = table.pivot(index="kind", columns="seed", values="rel_change_%").add_prefix("seed ")
    wide.insert(0, "mean", wide.mean(axis=1))
    wide.insert(1, "vs subset", wide["mean"] - wide.loc["clean_subset", "mean"])
    wide["caption_sens_%"] = 100 * table.groupby("kind")["caption_sensitivity"].mean()
    pd.set_option("display.width", 200)
    print(f"overrides: {args.set or 'none'}; {time.perf_counter() - start:.0f} s on {args.threads} thread(s); "
          f"{args.steps} steps per arm, "
          f"{n_kind}/{batch} rows per batch from the kind; clean arm's val loss: "
          + ", ".join(f"seed {s} {v:.4f}" for s, v in clean.items()))
    print("val loss after fine-tuning with the kind, relative to the clean arm (%; > 0: the kind hurts val):")
    print(wide.sort_values("mean").round(2).to_string())


if __name__ == "__main__":
    main()
