"""Compare trained model families on the same dataset, configuration and folds.

Reads each family's model folder (its pooled cross-validation report, fold logs and validation
timings) and writes one comparison: per family and class the mean ± sd of Dice and NSD over the
held-out cases, the paired difference of each family against a baseline (the plain U-Net: the
no-mixer control) with a Wilcoxon signed-rank test over the cases both scored, parameters,
iterations reached, seconds per iteration, inference seconds per case and peak memory. Output:
compare.json, compare.md and compare.png (foreground Dice per case, one box per family)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from medseg.atomic import atomic_path, write_json_atomic, write_text_atomic
from medseg.errors import MedsegError
from medseg.model_folder import ModelFolder

BASELINE = "unet"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise MedsegError(f"{path}: cannot read ({error})") from None


def case_scores(report: dict, metric: str) -> dict[str, dict[str, float]]:
    """class -> case -> value, plus "foreground" (the mean over classes of each case); NaN where undefined."""
    per_case = report["per_case"]
    classes = sorted({name for case in per_case.values() for name in case})
    scores = {name: {} for name in classes}
    for case_id, metrics in per_case.items():
        values = []
        for name in classes:
            value = metrics.get(name, {}).get(metric)
            value = float("nan") if value is None else float(value)
            scores[name][case_id] = value
            values.append(value)
        finite = [v for v in values if not math.isnan(v)]
        scores.setdefault("foreground", {})[case_id] = float(np.mean(finite)) if finite else float("nan")
    return scores


def _summary(values: list[float]) -> dict:
    finite = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if finite.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": round(float(finite.mean()), 4), "sd": round(float(finite.std(ddof=1)) if finite.size > 1 else 0.0, 4), "n": int(finite.size)}


def paired_difference(ours: dict[str, float], theirs: dict[str, float]) -> dict:
    """Mean difference (ours - theirs) over the cases both scored, and the Wilcoxon signed-rank p."""
    from scipy.stats import wilcoxon

    common = [c for c in ours if c in theirs and not math.isnan(ours[c]) and not math.isnan(theirs[c])]
    differences = np.array([ours[c] - theirs[c] for c in common], dtype=float)
    if differences.size == 0:
        return {"mean_difference": None, "p_wilcoxon": None, "n": 0}
    p = None
    if differences.size >= 2:
        p = 1.0 if np.allclose(differences, 0) else float(wilcoxon(differences).pvalue)
    return {"mean_difference": round(float(differences.mean()), 4), "p_wilcoxon": None if p is None else round(p, 4), "n": int(differences.size)}


def family_costs(folder: ModelFolder, folds: list[str]) -> dict:
    """Parameters, iterations, seconds per iteration, inference seconds per case, peak memory."""
    from medseg.models import build_model

    plans = folder.plans
    network = build_model(folder.configuration.architecture, plans.input_channels(folder.configuration), plans.num_classes)
    iterations, seconds, predict, peaks = 0, 0.0, [], []
    for fold in folds:
        log = _read_json(folder.fold_folder(fold) / "log.json")
        iterations += int(log["state"]["iteration"])
        seconds += float(log["state"]["elapsed_s"])
        peaks.append(log.get("peak_memory_mb", {}).get("process_rss"))
        summary = _read_json(folder.fold_folder(fold) / "validation" / "summary.json")
        if summary.get("prediction_seconds_per_case") is not None:
            predict.append(summary["prediction_seconds_per_case"])
    known_peaks = [p for p in peaks if p is not None]
    return {
        "parameters": int(sum(p.numel() for p in network.parameters())),
        "patch_size": folder.configuration.patch_size,
        "batch_size": folder.configuration.batch_size,
        "iterations": iterations,
        "training_seconds": round(seconds, 1),
        "seconds_per_iteration": round(seconds / iterations, 3) if iterations else None,
        "inference_seconds_per_case": round(float(np.mean(predict)), 3) if predict else None,
        "peak_memory_mb": max(known_peaks) if known_peaks else None,
    }


def compare_families(folders: dict[str, ModelFolder], folds: list[str], baseline: str = BASELINE) -> dict:
    """``folders``: family -> its trained model folder (same dataset, configuration and folds)."""
    families = {}
    scores = {}
    for name, folder in folders.items():
        for fold in folds:
            if not folder.fold_finished(fold):
                raise MedsegError(f"{folder.fold_folder(fold)}: fold {fold} of {name} has not finished training and validation")
        report = _read_json(folder.crossval_summary_path())
        if sorted(report.get("folds", [])) != sorted(folds):
            raise MedsegError(f"{folder.crossval_summary_path()}: covers folds {report.get('folds')}, not {folds}; rerun plan-and-train with --folds {','.join(folds)}")
        scores[name] = {metric: case_scores(report, metric) for metric in ("dice", "nsd")}
        families[name] = {
            "model_folder": str(folder.path),
            "dice": {cls: _summary(list(values.values())) for cls, values in scores[name]["dice"].items()},
            "nsd": {cls: _summary(list(values.values())) for cls, values in scores[name]["nsd"].items()},
            **family_costs(folder, folds),
        }
    if baseline in scores:
        for name in families:
            if name != baseline:
                families[name][f"dice_vs_{baseline}"] = {
                    cls: paired_difference(values, scores[baseline]["dice"].get(cls, {})) for cls, values in scores[name]["dice"].items()
                }
    cases = sorted(next(iter(scores.values()))["dice"]["foreground"]) if scores else []
    return {
        "folds": folds, "baseline": baseline if baseline in scores else None, "num_cases": len(cases), "families": families,
        "foreground_dice_per_case": {name: s["dice"]["foreground"] for name, s in scores.items()},
    }


def _cell(summary: dict) -> str:
    return "-" if summary["mean"] is None else f"{summary['mean']:.3f} ± {summary['sd']:.3f}"


def _paired_cell(paired: dict | None) -> str:
    if paired is None:
        return "(baseline)"
    if paired["mean_difference"] is None:
        return "-"
    p = "-" if paired["p_wilcoxon"] is None else f"{paired['p_wilcoxon']:.3g}"
    return f"{paired['mean_difference']:+.3f} (p {p})"


def markdown(comparison: dict, title: str) -> str:
    families = comparison["families"]
    classes = [c for c in next(iter(families.values()))["dice"] if c != "foreground"]
    baseline = comparison["baseline"]
    header = ["family", "Dice (foreground)", *[f"Dice {c}" for c in classes], "NSD (foreground)"]
    if baseline:
        header.append(f"Δ Dice vs {baseline} (p)")
    header += ["patch × batch", "parameters", "iterations", "s/iteration", "inference s/case", "peak MB"]
    lines = [f"# {title}", "", f"{comparison['num_cases']} held-out cases, folds {', '.join(comparison['folds'])}; mean ± sd over cases.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, family in families.items():
        row = [name, _cell(family["dice"]["foreground"]), *[_cell(family["dice"][c]) for c in classes], _cell(family["nsd"]["foreground"])]
        if baseline:
            row.append(_paired_cell(family.get(f"dice_vs_{baseline}", {}).get("foreground")))
        row += [f"{'×'.join(map(str, family['patch_size']))} × {family['batch_size']}", f"{family['parameters'] / 1e6:.2f} M", str(family["iterations"]), str(family["seconds_per_iteration"]),
                str(family["inference_seconds_per_case"]), str(family["peak_memory_mb"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def box_plot(path: Path, per_case: dict[str, dict[str, float]], title: str) -> None:
    """Foreground Dice per case, one box (quartiles, median, whiskers to min/max, mean dot) per family."""
    from PIL import Image, ImageDraw

    width, height, margin = 160 + 140 * len(per_case), 420, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 10), title, fill="black")
    top, bottom = margin, height - margin

    def y(value: float) -> float:
        return bottom - (bottom - top) * value

    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        draw.line([(margin, y(tick)), (width - margin // 2, y(tick))], fill=(225, 225, 225))
        draw.text((8, y(tick) - 6), f"{tick:.2f}", fill="black")
    for index, (name, values) in enumerate(per_case.items()):
        finite = np.array([v for v in values.values() if not math.isnan(v)], dtype=float)
        center = margin + 70 + 140 * index
        draw.text((center - 40, bottom + 12), name[:18], fill="black")
        if finite.size == 0:
            continue
        q1, median, q3 = np.percentile(finite, (25, 50, 75))
        draw.line([(center, y(finite.min())), (center, y(finite.max()))], fill=(90, 90, 90))
        draw.rectangle([center - 30, y(q3), center + 30, y(q1)], outline=(31, 119, 180), fill=(198, 219, 239))
        draw.line([(center - 30, y(median)), (center + 30, y(median))], fill=(31, 119, 180), width=2)
        mean = float(finite.mean())
        draw.ellipse([center - 3, y(mean) - 3, center + 3, y(mean) + 3], fill=(214, 39, 40))
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")


def write_comparison(folder: Path, comparison: dict, title: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    outputs = [folder / "compare.json", folder / "compare.md", folder / "compare.png"]
    write_json_atomic(outputs[0], comparison)
    write_text_atomic(outputs[1], markdown(comparison, title))
    box_plot(outputs[2], comparison["foreground_dice_per_case"], f"{title}: foreground Dice per held-out case")
    return outputs
