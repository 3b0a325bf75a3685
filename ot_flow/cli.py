"""Command line: ``python -m ot_flow <command>``.

Commands:
  demo      the main job: ``compare`` on the embedded configs (seed paper 002's piecewise-affine
            map at d = 32, and scikit-learn's digits), about 7 minutes on a 2-core CPU; run
            again, it resumes (finished methods are only evaluated) unless ``--overwrite``.
  train     train the methods of a config (``--method`` to pick some). A method whose run
            directory holds a run needs ``--resume`` (continue it: an interrupted training or
            semidiscrete fit goes on where its last checkpoint stopped) or ``--overwrite``
            (train it afresh); without either, nothing trains.
  eval      evaluate trained methods: curvature, reconstruction, BPD, sample quality vs steps;
            checkpoints saved before the config's last step are marked partial, methods without
            a checkpoint are named in one line each and skipped.
  compare   train and evaluate every method of a config; print the table, write plots.
  sinkhorn  solve one large Sinkhorn coupling between two Gaussian clouds and check its cost
            against the closed-form W2^2 / 2.
"""

import argparse
import importlib.resources
import resource
import sys
import time

import torch

import ot_flow

DEMO_CONFIGS = ("demo_piecewise_affine_d32.yaml", "demo_digits.yaml")


def demo_config_paths():
    root = importlib.resources.files("ot_flow") / "configs"
    return [str(root / name) for name in DEMO_CONFIGS]


def _experiment(args, *, train, evaluate):
    from ot_flow.experiments import config as experiment_config, runner

    paths = args.config or demo_config_paths()
    configs = [experiment_config.load_config(path) for path in paths]  # every config checked before any training
    # The demo is re-run as is: it continues its runs unless told to start afresh.
    resume = args.resume or (args.command == "demo" and not args.overwrite)
    for config in configs:
        if args.output_dir:
            config.output_dir = args.output_dir if len(configs) == 1 else f"{args.output_dir}/{config.name}"
        if args.device:
            config.train.device = args.device
        if train:  # before anything trains: no run is replaced unasked
            runner.check_not_replacing(config, experiment_config.select_methods(config, args.method), resume=resume,
                                       overwrite=args.overwrite)
    for config in configs:
        start = time.perf_counter()
        print(f"== {config.name}: task {config.task.name}, {len(config.methods)} methods, "
              f"{config.train.steps} steps each, run directory {config.run_dir}", flush=True)
        if train and not evaluate:
            task = runner.build_task(config)
            for method in experiment_config.select_methods(config, args.method):
                _, pairs, trainers = runner.train_method(config, method, task, progress=not args.quiet,
                                                         resume=resume, overwrite=args.overwrite)
                losses = ", ".join(f"{tr.history[-1]['loss']:.4f}" for tr in trainers)
                print(f"{method.name}: {trainers[0].step} steps, loss {losses}, "
                      f"{sum(tr.train_seconds for tr in trainers):.0f} s, coupling {1e6 * pairs.seconds_per_pair:.1f} "
                      f"us/pair, setup {pairs.setup_seconds:.1f} s", flush=True)
            continue
        rows = runner.run_experiment(config, methods=args.method, progress=not args.quiet, resume=resume,
                                     overwrite=args.overwrite, evaluate_only=not train)
        print(f"\n{config.name} ({time.perf_counter() - start:.0f} s; lower is better except E(P)):")
        print(runner.format_table(rows, config), flush=True)
        print(f"results, table and plots in {config.run_dir}/", flush=True)


def sinkhorn_demo(args):
    torch.manual_seed(args.seed)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    n, d = args.n, args.dim
    # Source N(0, I); target N(mu, diag(sigma^2)): W2^2 = |mu|^2 + sum_k (1 - sigma_k)^2.
    mu = torch.linspace(-1.0, 1.0, d)
    sigma = torch.linspace(0.5, 1.5, d)
    x = torch.randn(n, d)
    y = mu + sigma * torch.randn(n, d)
    w2_half = 0.5 * float(mu.square().sum() + (1 - sigma).square().sum())
    x, y = x.to(device), y.to(device)

    print(f"ot_flow {ot_flow.__version__} (torch {torch.__version__}, CUDA kernels built: {ot_flow.cuda_built()}), "
          f"device {device}, {torch.get_num_threads()} CPU threads")
    print(f"Sinkhorn between {n:,} source and {n:,} target points in d={d}, eps={args.eps} x std(C), tol={args.tol}")
    start = time.perf_counter()
    res = ot_flow.sinkhorn(x, y, eps=args.eps, tol=args.tol)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    cost = res.transport_cost()
    entropy = res.renormalized_entropy()
    moved = (res.barycentric_map() - x).norm(dim=1).mean().item()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    dense_gib = n * n * 4 / 2**30
    print(f"  converged: {res.converged} after {res.n_iter} iterations in {elapsed:.2f} s "
          f"({1e3 * elapsed / max(res.n_iter, 1):.1f} ms per iteration, {res.path} path), "
          f"marginal error {res.error:.2e}")
    print(f"  absolute eps {res.eps:.4g}; renormalized entropy E(P) = {entropy:.3f} (0 = permutation, 1 = independent)")
    print(f"  transport cost <P, C> = {cost:.4f}; closed-form W2^2/2 of the two Gaussians = {w2_half:.4f} "
          f"(gap: entropic blur and sampling error of {n:,} points)")
    print(f"  mean displacement |T(x) - x| of the entropic map: {moved:.4f}")
    print(f"  peak RSS {rss:.2f} GiB; a dense float32 cost matrix alone would take {dense_gib:.2f} GiB")


def main(argv=None):
    """Runs a command. From the command line (``argv`` None) a ValueError (a bad config, argument
    or run directory, named in its message) ends the program with that one line and status 2;
    called with ``argv``, it raises."""
    parser = argparse.ArgumentParser(prog="python -m ot_flow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, train, evaluate, help_text in (
            ("demo", True, True, "compare I-FM, OT-FM, SD-FM, NSGF and NSGF++ on the embedded configs (the main job)"),
            ("compare", True, True, "train and evaluate every method of the configs, print the table, write plots"),
            ("train", True, False, "train the methods of the configs"),
            ("eval", False, True, "evaluate the trained methods of the configs")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", action="append", required=name != "demo",
                       help="experiment YAML (repeatable; demo: the embedded configs)")
        p.add_argument("--method", action="append",
                       help="only this method: a name from the config, or a coupling (independent, semidiscrete, "
                            "nsgf, nsgf++, ot) for all its methods, added with defaults when missing; repeatable")
        if train:
            runs = p.add_mutually_exclusive_group()
            runs.add_argument("--resume", action="store_true",
                              help="continue the runs in the run directory from their checkpoints"
                                   + (" (the default of demo)" if name == "demo" else ""))
            runs.add_argument("--overwrite", action="store_true", help="train afresh, replacing the runs there")
        p.add_argument("--output-dir", help="run directory (default runs/<config name>)")
        p.add_argument("--device", help="override train.device (cpu, cuda, ...)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=lambda args, t=train, e=evaluate: _experiment(args, train=t, evaluate=e),
                       resume=False, overwrite=False)
    p = sub.add_parser("sinkhorn", help="solve one large Sinkhorn coupling and print what it measured")
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--eps", type=float, default=0.01)
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=sinkhorn_demo)
    args = parser.parse_args(argv)
    if argv is not None:  # called from Python: the caller handles the exceptions
        return args.func(args)
    try:
        return args.func(args)
    except ValueError as error:  # bad configs, arguments, runs: their messages name the key or file
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
