"""OT flow matching under DDP: the ranks solve each round's coupling together and train on
disjoint shares of its pairs.

    torchrun --nproc_per_node=2 examples/train_ddp.py --config configs/ddp_toy.yaml

Gloo on CPUs, NCCL when every rank has a GPU (the same command, no edits). Rank 0 prints the
loss and, at the end, the Sinkhorn divergence between generated samples and held-out data.
"""

import argparse
import os

import torch
import torch.distributed as dist
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

import ot_flow
from ot_flow.flow import VelocityMLP, odeint
from ot_flow.flow.tasks import ToyTask

DEFAULTS = dict(data="eight_gaussians", data_size=50_000, coupling_size=4096, batch_size=256, steps=400,
                lr=1e-3, eps=0.05, width=256, seed=0, log_every=100)


def load_config(path):
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    merged = {**DEFAULTS, **config}
    for key, default in DEFAULTS.items():
        if not isinstance(merged[key], type(default)) and not (isinstance(default, float) and isinstance(merged[key], int)):
            raise ValueError(f"{path}: '{key}' must be a {type(default).__name__}, got {merged[key]!r}")
    if merged["data"] not in ("eight_gaussians", "moons"):
        raise ValueError(f"{path}: 'data' must be eight_gaussians or moons, got {merged['data']!r}")
    return merged


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    args = parser.parse_args()
    config = load_config(args.config)
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(config["seed"])  # the same initial model on every rank

    task = ToyTask(config["data"], seed=config["seed"], num_train=config["data_size"], num_test=4000)
    data = task.train_data
    sampler = ot_flow.OTSampler(eps=config["eps"], process_group=dist.group.WORLD)
    pairs = ot_flow.data.OTPairDataset(None, data, sampler, coupling_size=config["coupling_size"],
                                       batch_size=config["batch_size"], seed=config["seed"], device=device)
    model = DistributedDataParallel(VelocityMLP((2,), width=config["width"], depth=2).to(device),
                                    device_ids=[device.index] if use_cuda else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    for step, (x0, x1) in enumerate(DataLoader(pairs, batch_size=None)):
        if step == config["steps"]:
            break
        t = torch.rand(x0.shape[0], device=device)
        loss = ((model((1 - t[:, None]) * x0 + t[:, None] * x1, t) - (x1 - x0)) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0 and step % config["log_every"] == 0:
            print(f"step {step:5d}  loss {loss.item():.3f}  (coupling E = "
                  f"{sampler.last_plan.renormalized_entropy():.3f}, {world} ranks)", flush=True)

    if rank == 0:
        with torch.no_grad():
            x = odeint(model.module, torch.randn(4000, 2, device=device), method="euler", steps=8).x
        held_out = task.test_data.to(device)
        divergence = ot_flow.sinkhorn_divergence(x, held_out, eps=0.01).item()
        print(f"done: {config['steps']} steps on {world} ranks; Sinkhorn divergence of 8-step samples to held-out "
              f"data {divergence:.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
