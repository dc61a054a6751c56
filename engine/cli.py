"""The command lines of train.py and train_kd.py: train_kd.py's parser extends train.py's (argparse parents)."""

from __future__ import annotations

import argparse

from utils.general import ROOT


def train_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """train.py's flags: v6.0's (W&B flags omitted) and the seed's distillation spellings."""
    p = argparse.ArgumentParser(description="Train YOLOv5", add_help=add_help)
    p.add_argument("--weights", type=str, default="", help="initial weights path ('' = from scratch)")
    p.add_argument("--cfg", type=str, default="", help="model.yaml path")
    p.add_argument("--data", type=str, default=str(ROOT / "data/shapes.yaml"), help="dataset.yaml path")
    p.add_argument("--hyp", type=str, default=None,
                   help="hyperparameters path (default: data/hyps/hyp.scratch.yaml, hyp.v8.yaml for YOLOv8-style models)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16, help="total batch size for all GPUs")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="train, val image size (pixels)")
    p.add_argument("--rect", action="store_true", help="rectangular training")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume most recent training, or a last.pt")
    p.add_argument("--nosave", action="store_true", help="only save final checkpoint")
    p.add_argument("--noval", action="store_true", help="only validate final epoch")
    p.add_argument("--noautoanchor", action="store_true", help="disable autoanchor check")
    p.add_argument("--evolve", type=int, nargs="?", const=300, help="(not supported in yolov5-kd; refused)")
    p.add_argument("--cache", type=str, nargs="?", const="ram", help="--cache images in 'ram' (default) or 'disk'")
    p.add_argument("--image-weights", action="store_true", help="use weighted image selection for training")
    p.add_argument("--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu")
    p.add_argument("--multi-scale", action="store_true", help="vary img-size +/- 50%%")
    p.add_argument("--single-cls", action="store_true", help="train multi-class data as single-class")
    p.add_argument("--adam", action="store_true", help="use torch.optim.Adam() optimizer")
    p.add_argument("--sync-bn", action="store_true", help="use SyncBatchNorm, only available in DDP mode")
    p.add_argument("--no-channels-last", action="store_true",
                   help="keep conv weights NCHW while training (default: channels_last in a single process, "
                        "faster on CPU and GPU; DDP runs always use NCHW)")
    p.add_argument("--bf16", action="store_true",
                   help="CPU: train with bf16 autocast (a training step 1.7x faster where the CPU has avx512_bf16, measured; "
                        "float32 weights, optimizer and loss sums). CUDA always trains with fp16 AMP")
    p.add_argument("--workers", type=int, default=8, help="maximum number of dataloader workers")
    p.add_argument("--project", default=str(ROOT / "runs/train"), help="save to project/name")
    p.add_argument("--name", default="exp", help="save to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--quad", action="store_true", help="quad dataloader")
    p.add_argument("--linear-lr", action="store_true", help="linear LR")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="Label smoothing epsilon")
    p.add_argument("--patience", type=int, default=100, help="EarlyStopping patience (epochs without improvement)")
    p.add_argument("--freeze", type=int, default=0, help="Number of layers to freeze. backbone=10, all=24")
    p.add_argument("--save-period", type=int, default=-1, help="Save checkpoint every x epochs (disabled if < 1)")
    p.add_argument("--local_rank", type=int, default=-1,
                   help="accepted and unused (torch.distributed.launch passes it; the rank is read from the "
                        "LOCAL_RANK environment variable)")
    p.add_argument("--seed", type=int, default=0, help="global training seed")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load --weights with full pickle (only for files you trust; unsafe)")
    g = p.add_argument_group("distillation (the seed's train.py spellings; train_kd.py has every option)")
    g.add_argument("--t_weights", "--t-weights", type=str, default=None,
                   help="teacher checkpoint: distil from it exactly as train_kd.py does (= --teacher_weight)")
    g.add_argument("--dist_loss", "--dist-loss", type=str, default=None, choices=["l2", "kl", "bce"],
                   help="output distillation loss (= train_kd.py --kd_loss_selected)")
    g.add_argument("--distill_ratio", "--distill-ratio", type=float, default=None,
                   help="weight of the output distillation loss (= train_kd.py --alpha)")
    return p


def str2bool(v: str | bool) -> bool:
    """--isL True/False (the seed's spelling); also yes/no, 1/0."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("true", "t", "yes", "y", "1"):
        return True
    if s in ("false", "f", "no", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {v!r}")


def kd_parser() -> argparse.ArgumentParser:
    """train.py's parser plus distillation flags; the student defaults to yolov5s as in the seed fork.

    Distillation flags default to None ("not given"): alone they describe the run with the defaults in
    their help (distill.yolo_config.DEFAULT_CONFIG); next to --kd_config they override the file. The
    feature losses and their --<type>_weight / --<type>_<option> flags come from the loss registry
    (distill/registry.py); engine/kd_flags.py maps all of them onto what distill reads.
    """
    p = argparse.ArgumentParser(description="Distil a YOLOv5 student from a teacher",
                                parents=[train_parser(add_help=False)])
    p.set_defaults(cfg=str(ROOT / "models/yolov5s.yaml"))
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher_weight", "--teacher-weight", "--teacher", type=str, default=None,
                   help="trained teacher checkpoint (official v6.0/v7.0 or ours); output KD pairs its classes with "
                        "--data's by name (--teacher_classes) (default: weights/yolov5m.pt); with --resume: use this "
                        "file instead of the run's teacher")
    g.add_argument("--teacher_classes", "--teacher-classes", type=str, default=None, metavar="DATA:TEACHER,...",
                   help="output KD with a teacher of other classes (e.g. the 80-class yolov5m.pt on data with some of "
                        "COCO's): data classes are matched to the teacher's by name (case, spaces, underscores aside); "
                        "these pairs name the others, e.g. 'motorbike:motorcycle,tram:-' (-: no class KD for it). "
                        "Recipe key teacher_classes; the map is printed at the start and saved in kd.yaml")
    g.add_argument("--unlabeled", type=str, nargs="+", default=None, metavar="PATH",
                   help="images without labels, distilled from the teacher alongside the labelled ones: a folder, a "
                        "*.txt list, or several (default: the data yaml's 'unlabeled:'); val/test images are left out")
    g.add_argument("--unlabeled_ratio", "--unlabeled-ratio", type=float, default=None, metavar="F",
                   help="fraction of each batch that is unlabeled images (default 0.5); an epoch is one pass over the "
                        "labelled images")
    g.add_argument("--kd_config", "--kd-config", type=str, default=None,
                   help="distillation recipe: layers, losses, parameters, weights (data/kd/NAME.yaml or NAME, "
                        "e.g. card); the flags below override it; the resolved recipe is saved as kd.yaml in the run")
    g.add_argument("--teacher_dtype", "--teacher-dtype", type=str, default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="precision of the teacher's forward: auto = fp16 on CUDA, bf16 on CPUs with native bf16 "
                        "(avx512_bf16/AMX), else fp32; the losses are computed in fp32 either way")
    g.add_argument("--teacher_overlap", "--teacher-overlap", type=str, default="auto", choices=["auto", "on", "off"],
                   help="CPU: run the teacher's forward of the next batch on a second thread during the student's "
                        "step (same results; auto = on when 2 x torch threads fit the cores, e.g. OMP_NUM_THREADS=1 "
                        "on 2 cores)")
    _add_recipe_flags(g)
    # the YOLOv8 KD seed's spellings of train.py flags (suppressed defaults: the originals' stay)
    g.add_argument("--model", dest="cfg", default=argparse.SUPPRESS, help="= --cfg (model.yaml)")
    g.add_argument("--batch", dest="batch_size", type=int, default=argparse.SUPPRESS, help="= --batch-size")
    _add_loss_flags(p)
    return p


def _add_recipe_flags(g) -> None:
    """The distillation recipe as flags (the seed fork's and ours): output KD, feature losses, layers."""
    from distill.losses import feature_types
    from distill.yolo_config import DEFAULT_TEMPERATURE, default_weight
    from distill.yolo_output import OUTPUT_DEFAULT_ALPHA

    g.add_argument("--isL", type=str2bool, default=None,
                   help="the seed's: teacher is a yolov5l (True) or yolov5m (False); layer pairing is inferred "
                        "from the models, a value given that contradicts the teacher is reported")
    g.add_argument("--kd_loss_selected", "--kd-loss", type=str, default=None, choices=["l2", "kl", "bce"],
                   help="output distillation loss on the teacher-objectness-weighted raw outputs (default: kl)")
    g.add_argument("--temperature", type=float, default=None,
                   help=f"softening temperature for kl/bce class terms, loss scaled by T^2 (default: {DEFAULT_TEMPERATURE:g})")
    g.add_argument("--alpha", type=float, default=None,
                   help="weight of the output KD loss (default: " +
                        ", ".join(f"{k} {v:g}" for k, v in OUTPUT_DEFAULT_ALPHA.items()) + ")")
    features = feature_types()
    g.add_argument("--beta", type=float, default=None,
                   help="weight of the feature loss (default, by loss: " +
                        ", ".join(f"{k} {default_weight({'type': k}):g}" for k in features) + ")")
    g.add_argument("--feature_loss", "--feature-loss", type=str, nargs="+", default=None, choices=features + ["none"],
                   metavar="LOSS", help="feature distillation on hooked layers, one or more of: " +
                   ", ".join(features) + "; or none (default: scorel2; fitnet uses 1x1 adapters)")
    g.add_argument("--save_mask_examples", type=int, default=4, metavar="N",
                   help="with imitation: draw the masks of N training images into imitation_masks.jpg (0: none)")
    g.add_argument("--student_layers", "--student-layers", type=str, default=None,
                   help="hooked student layers, e.g. 'model.4,model.6,model.17' (default: C3/SPPF outputs per stride)")
    g.add_argument("--teacher_layers", "--teacher-layers", type=str, default=None,
                   help="hooked teacher layers, paired by position with --student_layers")
    g.add_argument("--weight_by_cls", action="store_true",
                   help="weight cls/box KD by teacher objectness x max class probability (default: objectness)")
    g.add_argument("--kl_softmax", action="store_true",
                   help="kl: softmax over classes as in the public forks (default: per-class binary KL)")
    g.add_argument("--kd_obj", "--kd-obj", type=str, default=None, choices=["bce"],
                   help="objectness KD term: bce = BCE(sigma_s, sigma_t) in its KL form (default: the loss's own; "
                        "l2's squared difference has a vanishing gradient where the student is confidently wrong)")
    g.add_argument("--bce_subtract_entropy", action="store_true",
                   help="bce: log the KD value without the teacher's entropy (gradient unchanged; 0 at student == teacher)")
    g.add_argument("--kd_normalize", "--kd-normalize", type=str, default=None, choices=["weight", "cells"],
                   help="output KD's box and class terms: weight = by the teacher's weight mass, the same "
                        "strength at any image size (default); cells = the card's per-cell means, 11x weaker at 640 "
                        "than at 192 px (data/kd/card_exact.yaml). On YOLOv8 heads: cells = the per-point form (the "
                        "v8 default: the form that trains, distill/v8_output.py); weight = by the w^2 mass")
    g.add_argument("--kd_stop_epochs", "--kd-stop-epochs", type=int, default=None, metavar="N",
                   help="distillation off for the last N epochs, the student then trains on the labels alone (RTMDet's "
                        "recipe; e.g. the epochs after mosaic closes). Recipe key kd_stop_epochs; default 0")
    g.add_argument("--kd", action="store_true", default=True,
                   help="accepted and unused (the seed fork's switch; train_kd.py always distils)")
    g.add_argument("--kd_layer", "--kd-layer", type=int, nargs="+", default=None, metavar="I",
                   help="the YOLOv8 KD seed's layers: the same indices hooked in student and teacher (e.g. 15 18 21), "
                        "= --student_layers/--teacher_layers; feature loss mse unless --feature_loss is given")


def _add_loss_flags(p: argparse.ArgumentParser) -> None:
    """--<type>_weight and --<type>_<option> of every registered feature loss (distill/registry.py)."""
    from distill.losses import SPECS, feature_types
    from distill.registry import flag_name

    g = p.add_argument_group("per-loss weights and options", "each sets every recipe entry of that loss type. "
                             "The detection feature losses' defaults for YOLOv5 students put the term at about a "
                             "third of the detection loss at the start (scorel2: 0.3, ~3.9x it, measured better); YOLOv8 "
                             "students, whose detection loss is ~75x larger, keep the papers' weights")
    for loss_type in feature_types():
        spec = SPECS[loss_type]
        w5, w8 = spec.weight(), spec.weight(family="v8")
        default = f"{w5:g} for YOLOv5 students, {w8:g} for YOLOv8 students" if w8 != w5 else f"{w5:g}"
        g.add_argument(f"--{flag_name(loss_type, 'weight')}", type=float, default=None,
                       help=f"{spec.title} weight (default {default})")
        for key, option in spec.options.items():
            g.add_argument(f"--{flag_name(loss_type, key)}", type=spec.option_type(key), default=None,
                           help=f"{option.help} (default {spec.option_default(key):g})")
