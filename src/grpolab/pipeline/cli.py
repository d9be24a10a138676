"""`grpolab` command line (typer). Every command validates params before any expensive work.

    grpolab params check [params.yaml]     derived values, or every bad key as `key: value — rule`
    grpolab params check --explain KEY     what a param means (unit, paper / verl name), its default and value
    grpolab model download                 the download stage
    grpolab data toy --out data/           toy arithmetic train/val sets (Archer/verl rows)
    grpolab smoke | train | evaluate | report   the DVC stages, by hand
    grpolab score rollouts.jsonl           re-score saved rollouts
    grpolab preflight [params.yaml]        per-GPU memory estimate; refuses what cannot fit
    grpolab compare [EXP ...]              experiments side by side, with plots
    grpolab exps                           `dvc exp show` narrowed to what experiments are compared on
    grpolab diary [--out views]            index.md + progress.md of every run in the MLflow store
    grpolab postmortem EXP                 a run's metrics at chosen steps, where it went wrong, a verdict
    grpolab summary [EXP ...]              the campaign table: params that differ, outcomes, verdicts
    grpolab demo --workdir demo/           a fresh git+DVC workspace running the whole pipeline on CPU
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from grpolab.data.rows import write_toy
from grpolab.metrics import monitor
from grpolab.params import schema as config
from grpolab.params.entry import print_params_error, run_stage
from grpolab.pipeline.demo import run_demo
from grpolab.reports.compare import VIEWS_DIR, CompareError, compare, exp_show_args
from grpolab.reward.functions import RewardFunctionError, check_functions
from grpolab.reward.score_cli import score
from grpolab.util import console, flatten_params

# The stage bodies and the machine checks load torch (seconds): each command imports what it runs
# when it runs, so `grpolab params check --schema-only`, `exps`, `compare` start at once. This is the
# top floor (nothing imports grpolab.pipeline), so these imports can hide no circle.
STAGES = {"download": "grpolab.model.stage:download", "smoke": "grpolab.train.stage:smoke",
          "train": "grpolab.train.stage:train", "evaluate": "grpolab.eval.evaluate:evaluate_stage",
          "report": "grpolab.reports.stage:write_report"}


def _stage(name: str):
    module, _, fn = STAGES[name].partition(":")
    return getattr(importlib.import_module(module), fn)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.split("\n")[0])


def _flag_type(self, ctx):
    """A flag (`--force`, `--help`) takes no value: its help shows no `<bool>` (typer shows one)."""
    return None if self.is_flag else _typer_type(self, ctx)


_typer_type, typer.core.TyperOption.display_type_rich = typer.core.TyperOption.display_type_rich, _flag_type


def _version(show: bool) -> None:
    if show:
        from grpolab import __version__

        print(f"grpolab {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print grpolab's version and exit")) -> None:
    """GRPO math-RL experiments, reproducible: DVC stages, MLflow/W&B records, delivery reports."""
params_app = typer.Typer(no_args_is_help=True, help="Validate and inspect params.yaml.")
model_app = typer.Typer(no_args_is_help=True, help="Fetch or build models.")
data_app = typer.Typer(no_args_is_help=True, help="Data sets.")
app.add_typer(params_app, name="params")
app.add_typer(model_app, name="model")
app.add_typer(data_app, name="data")
err = console

ParamsFile = typer.Argument(Path("params.yaml"), help="params file to read")


def load_or_exit(path: Path) -> config.Params:
    """Validated params, reward functions resolved (imported) too; exit 1 naming every bad key."""
    try:
        p = config.load(path)
        try:
            check_functions(p.reward.function)
        except RewardFunctionError as exc:
            raise config.ParamsError(str(path), [str(exc)]) from None
        bad = monitor.problems(p.monitor)  # rule metrics by the glossary's names
        if bad:
            raise config.ParamsError(str(path), bad)
        return p
    except config.ParamsError as exc:
        print_params_error(path, exc)
        raise typer.Exit(1)


@params_app.command("check")
def params_check(path: Path = ParamsFile,
                 schema_only: bool = typer.Option(False, "--schema-only",
                                                  help="check the params alone, not whether this machine "
                                                       "can run them (rollout engine installed, CUDA)"),
                 explain: Optional[str] = typer.Option(None, "--explain", metavar="KEY",
                                                       help="print what KEY (e.g. lr, trainer.save_freq) means")) -> None:
    """Validate a params file and that this machine can run it; print derived values or every error
    (or explain one key)."""
    if explain:
        try:
            doc = config.explain(explain)
        except KeyError as exc:
            err.print(f"[red]error[/]: {exc.args[0]}", highlight=False)
            raise typer.Exit(1)
        value = ""
        if path.exists():
            try:
                value = flatten_params(config.load(path).model_dump(mode="json")).get(explain, "(a group)")
            except config.ParamsError:
                value = "(params file invalid)"
        print(f"{explain}: {doc['description']}\n  type: {doc['type']}   default: {doc['default']}"
              + (f"   {path}: {value}" if path.exists() else "") + (f"\n  rule: {doc['rule']}" if doc["rule"] else ""))
        return
    p = load_or_exit(path)
    if not schema_only:
        from grpolab.train.envcheck import environment_errors

        env = environment_errors(p)
        if env:
            err.print(f"[red]error[/]: {path}: valid params, but this machine cannot run them:")
            for e in env:
                err.print(f"  {e}", markup=False, highlight=False)
            raise typer.Exit(1)
    t = Table(title=f"{path}: valid — derived values")
    t.add_column("derived")
    t.add_column("value", justify="right")
    for k, v in config.derived(p).items():
        t.add_row(k, f"{v:,}" if isinstance(v, int) else f"{v:g}")
    Console().print(t)


@model_app.command("download")
def model_download(path: Path = ParamsFile) -> None:
    """Fetch `model.path` into `model.local_dir` and write the manifest."""
    run_stage(_stage("download"), [str(path)])


@data_app.command("toy")
def data_toy(out: Path = typer.Option(Path("data"), help="output folder"),
             train_size: int = 512, val_size: int = 64, seed: int = 0) -> None:
    """Write a small arithmetic train/val set in the Archer/verl row format."""
    for f in write_toy(out, train_size, val_size, seed):
        print(f)


def _stage_command(name: str):
    def cmd(path: Path = ParamsFile) -> None:
        run_stage(_stage(name), [str(path)])
    cmd.__doc__ = f"Run the `{name}` stage by hand (what `dvc repro {name}` runs)."
    return cmd


for _name in ("smoke", "train", "evaluate", "report"):
    app.command(_name)(_stage_command(_name))


app.command("score")(score)  # one implementation: grpolab.reward.score_cli


@app.command("demo")
def demo(workdir: Path = typer.Option(Path("demo"), help="fresh workspace to create (git-ignored default)"),
         force: bool = typer.Option(False, help="replace an existing demo workspace")) -> None:
    """Run the whole pipeline on the tiny model in a fresh git + DVC workspace, then an experiment."""
    raise typer.Exit(run_demo(workdir, force=force))



# --- grpolab compare / preflight (issue 5) --------------------------------------------------------
@app.command("compare")
def compare_cmd(
        exps: Optional[list[str]] = typer.Argument(None, help="experiments (names, branches or revs); default: all of HEAD"),
        metric: Optional[list[str]] = typer.Option(None, "--metric", "-m",
                                                   help="metric to plot over steps (repeatable; default: "
                                                        "critic/score/mean and actor/entropy)"),
        out: Optional[Path] = typer.Option(None, help="output folder (default: <repo>/reports)"),
        all_commits: bool = typer.Option(False, "--all-commits", "-A", help="also experiments of older commits"),
        mlflow_uri: Optional[str] = typer.Option(None, help="MLflow store (default: the one params.yaml names)"),
) -> None:
    """Markdown table (params that differ, final/best metrics) + PNG curves of experiments."""
    try:
        res = compare(Path.cwd(), exps or [], metric or None, out, all_commits, mlflow_uri)
    except CompareError as exc:
        err.print(f"[red]error[/]: {exc}", highlight=False)
        raise typer.Exit(1)
    print(res["table"])
    if res.get("evaluation"):  # the evaluate stage's step x data_source table of each experiment
        print("\n" + res["evaluation"])
    err.print(f"wrote {res['report']}" + "".join(f", {p}" for p in res["plots"].values()), highlight=False)


@app.command("diary")
def diary_cmd(path: Path = ParamsFile,
              out: Path = typer.Option(Path(VIEWS_DIR), help="folder to write index.md and progress.md into "
                                                             "(never reports/: a DVC output)")) -> None:
    """The diary of every experiment of the MLflow store (whichever branch, experiment ref or queued run
    holds its report): status, best held-out score, where its report is. Written outside DVC's outputs."""
    from grpolab.reports import diary

    p = load_or_exit(path)
    reports = Path(p.tracking.reports_dir)
    if out.resolve() == reports.resolve():
        err.print(f"[red]error[/]: --out {out} is the report stage's output (DVC owns it); choose another folder")
        raise typer.Exit(2)
    try:
        written = diary.write_diary(p, reports, out, strict=True)
    except Exception as exc:
        err.print(f"[red]error[/]: the MLflow store could not be read: {type(exc).__name__}: {exc}")
        raise typer.Exit(1)
    print(written[-1].read_text(), end="")
    err.print("wrote " + ", ".join(map(str, written)), highlight=False)


def _experiments(names: list[str], metrics: list[str], all_commits: bool = True):
    """(root, the named experiments (default: all of HEAD) with their MLflow histories)."""
    from grpolab.reports import compare as cmp
    from grpolab.records.gitmeta import project_root

    root = project_root(Path.cwd())
    try:
        exps = cmp.select(cmp.dvc_experiments(root, all_commits and bool(names)), names)
    except CompareError as exc:
        err.print(f"[red]error[/]: {exc}", highlight=False)
        raise typer.Exit(1)
    uri = cmp.mlflow_uri_for(root)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        err.print(f"[red]error[/]: no MLflow store at {uri}: the histories are read from it", highlight=False)
        raise typer.Exit(1)
    cmp.attach_mlflow(exps, uri, metrics)
    return root, exps


def _write_view(root: Path, name: str, text: str) -> None:
    out = root / VIEWS_DIR / name  # never into reports/, a DVC output
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text, end="")
    err.print(f"wrote {out}", highlight=False)


@app.command("postmortem")
def postmortem_cmd(exp: str = typer.Argument(..., help="experiment (name, branch or rev)"),
                   steps: Optional[str] = typer.Option(None, help="steps, e.g. 1,9,14,17 (default: first, last "
                                                                  "and where health found something)"),
                   metrics: Optional[str] = typer.Option(None, help="metrics, comma-separated (default: entropy, "
                                                                    "score, correct, solve_none, KL loss, length)")) -> None:
    """One run's chosen metrics at chosen steps, where it went wrong and a one-line verdict."""
    from grpolab.reports import compare as cmp, postmortem

    try:
        chosen = [int(x) for x in steps.split(",") if x.strip()] if steps else None
    except ValueError:
        err.print(f"[red]error[/]: --steps {steps!r}: give step numbers separated by commas, e.g. 1,9,14,17")
        raise typer.Exit(2)
    names = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else list(postmortem.METRICS)
    root, [e] = _experiments([exp], names)
    if not e.history:
        err.print(f"[red]error[/]: {e.label}: no MLflow train run found for it (nothing to look back on)")
        raise typer.Exit(1)
    text = postmortem.postmortem(e.label, cmp.history_dicts(e), e.params, chosen, names,
                                 postmortem.monitor_from_tags(e.tags))
    _write_view(root, f"postmortem-{cmp.slug(e.name)}.md", text)


@app.command("summary")
def summary_cmd(exps: Optional[list[str]] = typer.Argument(None, help="experiments (default: all of HEAD)")) -> None:
    """The campaign table: params that differ, outcome figures (peak score, entropy near step 100, best
    held-out score), and each experiment's verdict."""
    from grpolab.reports import compare as cmp, postmortem
    from grpolab.metrics import health

    root, chosen = _experiments(list(exps or []), [])
    rows = []
    for e in chosen:
        hist = cmp.history_dicts(e)
        rows.append({"label": e.label, "params": e.params, "history": hist, "metrics": e.metrics,
                     "verdict": postmortem.verdict(hist, health.check(hist, e.params),
                                                   postmortem.monitor_from_tags(e.tags), e.params)[1]
                     if hist else "no MLflow run"})
    text = "# Campaign summary\n\n" + postmortem.summary_table(rows, cmp.differing_params(chosen)) + "\n"
    _write_view(root, "summary.md", text)


@app.command("exps")
def exps_cmd(all_commits: bool = typer.Option(False, "--all-commits", "-A", help="also experiments of older commits"),
             md: bool = typer.Option(False, "--md", help="markdown table")) -> None:
    """`dvc exp show`, narrowed: only params that differ, key metrics first, no per-file or timing columns."""
    import subprocess

    raise typer.Exit(subprocess.call([sys.executable, "-m", "dvc", *exp_show_args(all_commits, md)]))


@app.command("preflight")
def preflight_cmd(
        path: Path = ParamsFile,
        device_memory_gb: float = typer.Option(80.0, help="memory of one GPU (GB)"),
        model_config: Optional[Path] = typer.Option(None, help="model config.json (default: <model.local_dir>/config.json)"),
        as_json: bool = typer.Option(False, "--json", help="print the estimate as JSON"),
) -> None:
    """Per-GPU memory and tokens per step from params + config.json; exit 1 when it cannot fit."""
    import json as _json

    from grpolab.train import preflight

    p = load_or_exit(path)
    try:
        cfg, where = preflight.find_model_config(p, model_config)
    except preflight.PreflightError as exc:
        err.print(f"[red]error[/]: {exc}", highlight=False)
        raise typer.Exit(2)
    device = "cpu" if p.trainer.device == "cpu" else "cuda"  # a CPU recipe: fp32, eager layers
    est = preflight.estimate(p, cfg, device_memory_gb, device=device)
    if as_json:
        print(_json.dumps(est, indent=1))
    else:
        t = Table(title=f"{path}: per-GPU estimate ({where})")
        t.add_column("what")
        t.add_column("estimate")
        for k, v in preflight.summary_rows(est):
            t.add_row(k, v)
        Console().print(t)
    if not est["fits"]:
        err.print(f"[red]refused[/]: {path} cannot run on {device_memory_gb:g} GB GPUs: "
                  + "; ".join(est["problems"]), highlight=False)
        for s in preflight.what_fits(p, cfg, device_memory_gb, device=device):
            err.print(f"  try: {s}", highlight=False, markup=False)
        raise typer.Exit(1)
    err.print(f"[green]fits[/]: {est['peak_gb']:.1f} of {device_memory_gb:g} GB per GPU", highlight=False)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
