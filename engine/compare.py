"""compare_kd.py: does distillation help on this data? Plain and distilled students side by side.

One comparison folder (runs/compare/exp, exp2, ...) holds an ordinary run folder per student and seed:
`plain-s0` (train.py), `<recipe>-s0` (train_kd.py; `default` = train_kd.py without --kd_config), all on the
same schedule and flags. Each run is a subprocess, so a comparison killed at any point continues when the
same command is given again: a finished run (its last.pt stripped, epoch -1) is kept, an interrupted one
resumes from its last.pt, one killed before its first checkpoint starts again. compare.yaml records the
options; a folder made with other options is never reused.

The answer, in summary.md (and summary.csv, one row per run): per recipe the paired difference to the plain
student on each seed, the mean difference with a 95% t-interval over the seeds, and a verdict on
mAP@0.5:0.95: `helps` when the interval lies above 0, `hurts` when it lies below, `no measurable effect`
otherwise. With one seed there is no interval: the verdict is the sign of the difference, `no measurable
effect` under 1 point, and the summary says to add seeds.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from engine.compare_report import PLAIN, Run, collect, write_summary
from engine.compare_run import Plan, execute
from utils.general import LOGGER, ROOT, UserError, yaml_load
from utils.loggers import is_number

KD_DIR = ROOT / "data" / "kd"
# flags compare_kd.py sets for every run itself: refused among the pass-through flags
MANAGED = {"--project": "the comparison folder is --project/--name", "--name": "the runs are named RECIPE-sSEED",
           "--exist-ok": "give --exist-ok to compare_kd.py", "--seed": "use --seeds", "--resume": "run the same "
           "compare_kd.py command again: it resumes every unfinished run", "--kd_config": "use --recipes",
           "--kd-config": "use --recipes", "--local_rank": "use --nproc_per_node",
           "--t_weights": "give the teacher with --teacher_weight (train.py would distil the plain student)",
           "--t-weights": "give the teacher with --teacher_weight (train.py would distil the plain student)",
           "--dist_loss": "use train_kd.py's --kd_loss_selected (train.py would distil the plain student)",
           "--dist-loss": "use train_kd.py's --kd_loss_selected (train.py would distil the plain student)",
           "--distill_ratio": "use train_kd.py's --alpha (train.py would distil the plain student)",
           "--distill-ratio": "use train_kd.py's --alpha (train.py would distil the plain student)"}


# --------------------------------------------------------------------------------------------------
# the plan


def known_recipes() -> list[str]:
    return ["default", *sorted(p.stem for p in KD_DIR.glob("*.yaml"))]


def resolve_recipe(name: str) -> tuple[str, str | None]:
    """--recipes entry -> (label, --kd_config value or None for train_kd.py's default)."""
    if name == "default":
        return name, None
    if (KD_DIR / f"{name}.yaml").is_file():
        return name, name
    p = Path(name)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        if p.stem in (PLAIN, "default") or (KD_DIR / f"{p.stem}.yaml").is_file():
            raise UserError(f"compare_kd.py: --recipes {name}: its name '{p.stem}' is taken by a built-in recipe; rename the file")
        return p.stem, str(p.resolve())
    raise UserError(f"compare_kd.py: --recipes {name}: not a recipe; known: {', '.join(known_recipes())}, or a path to a "
                    "kd config .yaml")


def split_flags(tokens: list[str]) -> list[list[str]]:
    """['--a', '1', '--b', '--c', 'x', 'y'] -> [['--a', '1'], ['--b'], ['--c', 'x', 'y']] (a negative number
    is a value, not a flag)."""
    groups: list[list[str]] = []
    for tok in tokens:
        is_flag = tok.startswith("-") and len(tok) > 1 and not is_number(tok)
        if is_flag:
            groups.append([tok])
        elif groups:
            groups[-1].append(tok)
        else:
            raise UserError(f"compare_kd.py: unexpected argument {tok!r}; flags start with --")
    return groups


def route_flags(extra: list[str]) -> tuple[list[str], list[str]]:
    """Pass-through flags -> (every run's, train_kd.py-only). Unknown and managed flags are refused by name."""
    from engine.cli import kd_parser, train_parser

    train_opts = set(train_parser()._option_string_actions)
    parser = kd_parser()
    kd_opts = set(parser._option_string_actions)
    common, kd_only = [], []
    for group in split_flags(extra):
        flag = group[0].split("=", 1)[0]
        if flag in MANAGED:
            raise UserError(f"compare_kd.py: {flag} is set by compare_kd.py ({MANAGED[flag]})")
        if flag in ("-h", "--help"):
            continue
        if flag in train_opts:
            common += group
        elif flag in kd_opts:
            kd_only += group
        else:
            raise UserError(f"compare_kd.py: unknown flag {flag}; it takes its own flags and any train.py or "
                            "train_kd.py flag (python train_kd.py --help)")
        # validate the value now, not after the plain runs trained
        try:
            parser.parse_args(group)
        except SystemExit:
            raise UserError(f"compare_kd.py: {' '.join(group)}: invalid value for {flag} "
                            "(see python train_kd.py --help)") from None
    return common, kd_only


def check_inputs(opt, teacher_classes: str | None = None) -> tuple[dict, list[str]]:
    """The data's class names and the teacher's, matched as train_kd.py matches them (teacher_classes: the
    --teacher_classes value passed through); UserError naming the flag or file on bad input. Returns
    (data dict, warnings)."""
    from models.checkpoint import attempt_load
    from utils.data.config import check_dataset

    if not opt.cfg and not opt.weights:
        raise UserError("compare_kd.py: give the student with --cfg (e.g. models/yolov5n.yaml) and/or --weights")
    for flag, value in (("--data", opt.data), ("--cfg", opt.cfg), ("--weights", opt.weights)):
        if value and not Path(value).exists() and not (flag == "--cfg" and (ROOT / "models" / value).is_file()):
            raise UserError(f"compare_kd.py: {flag} {value} not found")
    if not opt.teacher_weight:
        raise UserError("compare_kd.py: --teacher_weight is required (the trained teacher checkpoint)")
    from engine.kd import (
        check_teacher_path,  # train_kd.py's check: a folder names its checkpoints
    )

    try:
        check_teacher_path(opt.teacher_weight)
    except UserError as e:
        raise UserError(f"compare_kd.py: {e}") from None
    if len(set(opt.seeds)) != len(opt.seeds):
        raise UserError(f"compare_kd.py: --seeds {' '.join(map(str, opt.seeds))} repeats a seed; give each once")
    if len(set(opt.recipes)) != len(opt.recipes):
        raise UserError(f"compare_kd.py: --recipes {' '.join(opt.recipes)} repeats a recipe; give each once")
    if PLAIN in opt.recipes:
        raise UserError("compare_kd.py: --recipes: the plain student is always trained; list the distillation "
                        f"recipes only ({', '.join(known_recipes())})")
    if opt.epochs < 1:
        raise UserError(f"compare_kd.py: --epochs {opt.epochs}: train at least 1 epoch")
    data = check_dataset(opt.data)
    teacher = attempt_load(opt.teacher_weight, map_location="cpu", fuse=False)
    t_names = teacher.names.values() if isinstance(teacher.names, dict) else teacher.names
    t_names, d_names = [str(n) for n in t_names], [str(n) for n in data["names"]]
    # train_kd.py's class matching (by name, --teacher_classes for synonyms): refused here before any training
    from distill.recipe import match_classes, parse_teacher_classes

    try:
        cmap = match_classes(d_names, t_names, parse_teacher_classes(teacher_classes))
    except UserError as e:
        raise UserError(f"compare_kd.py: --teacher_weight {opt.teacher_weight} and --data {opt.data}: {e}") from None
    warnings = []
    if not cmap.identity:
        taught = sum(i >= 0 for i in cmap.index)
        warnings.append(f"the teacher's {len(t_names)} classes are matched with the data's {len(d_names)} by name: "
                        f"{taught} of {len(d_names)} data classes have a teacher class (each distilled run prints "
                        "the table; --teacher_classes DATA:TEACHER,... names synonyms)")
    return data, warnings


def options_of(opt, common: list[str], kd_only: list[str]) -> dict:
    """What identifies a comparison (compare.yaml): a folder made with other values is not reused."""
    return {"data": str(opt.data), "cfg": str(opt.cfg), "weights": str(opt.weights),
            "teacher_weight": str(opt.teacher_weight), "img": int(opt.img), "epochs": int(opt.epochs),
            "seeds": [int(s) for s in opt.seeds], "recipes": list(opt.recipes), "flags": list(common),
            "kd_flags": list(kd_only), "nproc_per_node": int(opt.nproc_per_node)}


OPTION_FLAGS = {"data": "--data", "cfg": "--cfg", "weights": "--weights", "teacher_weight": "--teacher_weight",
                "img": "--img", "epochs": "--epochs", "seeds": "--seeds", "recipes": "--recipes",
                "flags": "the train.py flags", "kd_flags": "the train_kd.py flags",
                "nproc_per_node": "--nproc_per_node"}


def first_difference(a: dict, b: dict) -> str | None:
    for k in OPTION_FLAGS:
        if a.get(k) != b.get(k):
            return f"{OPTION_FLAGS[k]}: the folder was made with '{_show(a.get(k))}', now '{_show(b.get(k))}'"
    return None


def _show(v) -> str:
    return " ".join(map(str, v)) if isinstance(v, list) else str(v)


def comparison_folder(project: str, name: str, exist_ok: bool, options: dict) -> tuple[Path, bool]:
    """(folder, reused): the first of project/name, name2, ... made with these options (continued), else the
    first free one; with exist_ok project/name itself, refused if it was made with other options."""
    base = Path(project) / name

    def recorded(folder: Path) -> dict | None:
        f = folder / "compare.yaml"
        return yaml_load(f) if f.is_file() else None

    if exist_ok:
        if base.exists():
            old = recorded(base)
            if old is None and any(base.iterdir()):
                raise UserError(f"compare_kd.py: {base} exists and is not a comparison folder (no compare.yaml); "
                                "choose another --project/--name")
            if old is not None and (diff := first_difference(old, options)):
                raise UserError(f"compare_kd.py: {base} is a comparison made with other options ({diff}); give "
                                "the same options to continue it, or another --name")
            return base, old is not None
        return base, False
    k = 1
    while True:
        folder = base if k == 1 else base.parent / f"{base.name}{k}"
        if not folder.exists():
            return folder, False
        old = recorded(folder)
        if old is not None and first_difference(old, options) is None:
            return folder, True
        k += 1


def _flag_value(tokens: list[str], *flags: str) -> str | None:
    """The value of the last of `flags` in pass-through tokens (--flag VALUE or --flag=VALUE), else None: the
    one argparse keeps when a flag is repeated."""
    value = None
    for group in split_flags(tokens):
        name, _, inline = group[0].partition("=")
        if name in flags:
            value = inline or (group[1] if len(group) > 1 else None)
    return value


def make_plan(opt, extra: list[str]) -> tuple[Plan, list[str]]:
    common, kd_only = route_flags(extra)
    recipes = [resolve_recipe(r) for r in opt.recipes]
    if opt.nproc_per_node > 1 and opt.jobs > 1:
        raise UserError("compare_kd.py: --jobs runs several students at once on a CPU; with --nproc_per_node "
                        "each run is distributed over the GPUs, one run after another: drop --jobs")
    _, warnings = check_inputs(opt, _flag_value(kd_only, "--teacher_classes", "--teacher-classes"))
    options = options_of(opt, common, kd_only)
    folder, reused = comparison_folder(opt.project, opt.name, opt.exist_ok, options)
    folder.mkdir(parents=True, exist_ok=True)
    if not reused:
        (folder / "compare.yaml").write_text(
            "# compare_kd.py options of this comparison: the same command continues it\n"
            + yaml.safe_dump(options, sort_keys=False))
    runs = [Run(PLAIN, s, None) for s in opt.seeds]
    runs += [Run(label, s, cfg) for s in opt.seeds for label, cfg in recipes]
    flags = ["--data", str(opt.data), "--img", str(opt.img), "--epochs", str(opt.epochs)]
    flags += ["--cfg", str(opt.cfg)] if opt.cfg else []
    flags += ["--weights", str(opt.weights)]
    timing = yaml_load(folder / "timing.yaml") if (folder / "timing.yaml").is_file() else {}
    plan = Plan(folder, options, runs, timing or {}, common=flags + common, kd_only=kd_only,
                teacher=str(opt.teacher_weight), nproc=opt.nproc_per_node, jobs=opt.jobs)
    if reused:
        LOGGER.info(f"compare_kd.py: continuing {folder} (made with the same options)")
    return plan, warnings


# --------------------------------------------------------------------------------------------------


def compare(opt, extra: list[str]) -> Path:
    """The whole command: checks, optional probe, the runs, the summary. Returns the comparison folder."""
    plan, warnings = make_plan(opt, extra)
    for w in warnings:
        LOGGER.warning(f"WARNING: {w}")
    if opt.probe:
        from engine.probe import probe

        plain = collect(plan).get(PLAIN, {})
        plain_map = max((v["m95"] for v in plain.values() if v["finished"]), default=None)
        report, probe_warnings = probe(opt.data, opt.cfg, opt.weights, opt.teacher_weight, opt.img,
                                       _flag_value(plan.common, "--hyp"),
                                       {label: cfg for label, cfg in (resolve_recipe(r) for r in opt.recipes)},
                                       device=_flag_value(plan.common, "--device") or "", plain_map=plain_map,
                                       seed=opt.seeds[0])
        (plan.folder / "probe.md").write_text(report)
        LOGGER.info(report)
        for w in probe_warnings:
            LOGGER.warning(f"WARNING: {w}")
        LOGGER.info(f"\nProbe written to {plan.folder / 'probe.md'}; run the same command without --probe to train")
        return plan.folder
    failed = execute(plan)
    f_csv, f_md, verdicts = write_summary(plan, warnings)
    table = [line for line in f_md.read_text().splitlines() if line.startswith("|")][:2 + len(plan.options["recipes"]) + 1]
    LOGGER.info("\n" + "\n".join(table) + f"\n\n{verdicts}\n\nSummary: {f_md} (table: {f_csv})")
    if failed:
        raise UserError(f"compare_kd.py: {len(failed)} run(s) failed: {', '.join(failed)}; their output is above"
                        + (f" and in {plan.folder}/<run>.log" if plan.jobs > 1 else "")
                        + "; fix the cause and run the same command again (finished runs are kept)")
    return plan.folder
