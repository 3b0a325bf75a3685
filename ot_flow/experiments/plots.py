"""PNG plots of a comparison: metrics against the coupling size, sample quality against the number
of function evaluations, trajectories of 2-D flows, grids of generated images.

matplotlib is imported lazily (Agg backend), so training and evaluation never need it."""

import os

__all__ = ["plot_metrics_vs_coupling_size", "plot_quality_vs_nfe", "plot_trajectories", "plot_image_grid",
           "write_plots"]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_metrics_vs_coupling_size(rows, path):
    """Curvature, reconstruction and BPD of the OT-FM runs against their coupling size n (one
    line per entropy setting), with the other methods (I-FM, SD-FM, NSGF) as horizontal lines."""
    plt = _pyplot()
    keys = [k for k in ("curvature", "reconstruction", "bpd") if any(r.get(k) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    lines = {}
    for r in rows:
        if r.get("coupling") == "ot" and r.get("coupling_size"):
            label = f"E={r['target_entropy']}" if r.get("target_entropy") is not None else f"eps={r.get('eps')}"
            lines.setdefault(label, []).append(r)
    for ax, key in zip(axes[0], keys):
        for label, group in sorted(lines.items()):
            group = sorted(group, key=lambda r: r["coupling_size"])
            ax.plot([r["coupling_size"] for r in group], [r[key] for r in group], "o-", label=f"OT-FM {label}")
        others = [r for r in rows if r.get("coupling") != "ot" and r.get(key) is not None]
        for r, color in zip(others, ("k", "tab:red", "tab:purple", "tab:brown", "tab:gray")):
            ax.axhline(r[key], linestyle="--" if r["coupling"] == "independent" else ":", color=color,
                       label=r["method"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("coupling size n")
        ax.set_title(key)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_quality_vs_nfe(rows, path, metric="sinkhorn"):
    """Sample quality (Sinkhorn divergence to held-out data) against function evaluations."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in rows:
        quality = r.get("quality", {})
        euler = sorted((v["nfe"], v[metric]) for k, v in quality.items() if k.startswith("euler"))
        line, = ax.plot(*zip(*euler), "o-", label=r["method"]) if euler else (None,)
        if "dopri5" in quality:
            ax.plot(quality["dopri5"]["nfe"], quality["dopri5"][metric], "*", markersize=11,
                    color=line.get_color() if line else None)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("function evaluations (Euler; * = dopri5)")
    ax.set_ylabel(f"{metric} to held-out data")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trajectories(paths, path, target=None):
    """``paths``: {method: Tensor (K+1, B, 2)} of ODE states; one panel per method."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(paths), figsize=(3.2 * len(paths), 3.2), squeeze=False)
    for ax, (name, states) in zip(axes[0], paths.items()):
        states = states.detach().cpu()
        if target is not None:
            ax.scatter(*target.cpu().T, s=1, color="0.8")
        ax.plot(states[:, :, 0], states[:, :, 1], color="tab:blue", linewidth=0.4, alpha=0.6)
        ax.scatter(*states[0].T, s=2, color="k")
        ax.scatter(*states[-1].T, s=2, color="tab:orange")
        ax.set_title(name, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_image_grid(images, path, columns=10):
    """``images``: {method: Tensor (B, C, H, W) in [-1, 1]}; one row of samples per method."""
    plt = _pyplot()
    rows = len(images)
    fig, axes = plt.subplots(rows, 1, figsize=(columns * 0.7, rows * 0.95), squeeze=False)
    for ax, (name, batch) in zip(axes[:, 0], images.items()):
        batch = batch[:columns].detach().cpu().clamp(-1, 1)
        c, h, w = batch.shape[1:]
        strip = batch.permute(2, 0, 3, 1).reshape(h, -1, c)
        ax.imshow(strip.squeeze(-1) if c == 1 else (strip + 1) / 2, cmap="gray" if c == 1 else None,
                  vmin=-1, vmax=1)
        ax.set_ylabel(name, rotation=0, ha="right", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(rows, run_dir, task=None, models=None, device=None, steps=16):
    """All plots that apply to this comparison; returns the paths written."""
    import torch

    from ot_flow.flow.ode import odeint

    written = []
    os.makedirs(run_dir, exist_ok=True)
    if any(r.get("coupling") == "ot" for r in rows):
        written.append(os.path.join(run_dir, "metrics_vs_coupling_size.png"))
        plot_metrics_vs_coupling_size(rows, written[-1])
    if any(r.get("quality") for r in rows):
        written.append(os.path.join(run_dir, "quality_vs_nfe.png"))
        plot_quality_vs_nfe(rows, written[-1])
    if task is None or not models:
        return written
    gen = torch.Generator().manual_seed(0)
    # Two-phase samplers (NSGF++) are not one ODE: they appear in the sample grids, not the paths.
    flows = {name: model for name, model in models.items() if not hasattr(model, "sample")}
    if task.dim == 2 and flows:
        x0 = task.sample_source(256, gen).to(device)
        with torch.no_grad():
            paths = {name: odeint(model, x0, method="euler", steps=steps, return_path=True).path
                     for name, model in flows.items()}
        written.append(os.path.join(run_dir, "trajectories.png"))
        plot_trajectories(paths, written[-1], target=task.test_data[:2000])
    if task.is_image:
        x0 = task.sample_source(10, gen).to(device)
        with torch.no_grad():
            images = {name: model.sample(x0, steps)[0] if hasattr(model, "sample")
                      else odeint(model, x0, method="euler", steps=steps).x for name, model in models.items()}
        images = {"data": task.test_data[:10], **images}
        written.append(os.path.join(run_dir, f"samples_{steps}_steps.png"))
        plot_image_grid(images, written[-1])
    return written

