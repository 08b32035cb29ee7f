"""Results as a markdown table and PNG plots (conditional acceptance curves, reliability diagrams)."""

from __future__ import annotations

from pathlib import Path

ACCEPT_AT = (0, 2, 4)  # accept_rate@k columns (0-based k: "more than k accepted")


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or x != x:
        return "-"
    return f"{100 * x:.1f}%" if pct else f"{x:.2f}"


def markdown_table(results: dict) -> str:
    """results[dataset][mode][drafter] -> summary dict (see aggregate.summarize)."""
    head = (
        "| data set | mode | drafter | tau | verify_rate | "
        + " | ".join(f"acc@{k}" for k in ACCEPT_AT)
        + " | ECE before | ECE after STS | ROC-AUC | Brier before | Brier after |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for dataset, modes in results.items():
        for mode, drafters in modes.items():
            for name, s in drafters.items():
                before, after = s.get("confidence_before", {}), s.get("confidence_after", {})
                cells = [dataset, mode, name, _fmt(s["tau"]), _fmt(s["verify_rate"], True)]
                rates = s["accept_rate"]
                cells += [_fmt(rates[k] if k < len(rates) else None, True) for k in ACCEPT_AT]
                cells += [
                    _fmt(before.get("ece"), True),
                    _fmt(after.get("ece"), True),
                    _fmt(after.get("roc_auc")),
                    _fmt(before.get("brier")),
                    _fmt(after.get("brier")),
                ]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_conditional_acceptance(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({m for modes in results.values() for m in modes})
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        for dataset, by_mode in results.items():
            for name, s in by_mode.get(mode, {}).items():
                curve = s["conditional_acceptance"]
                ax.plot(
                    range(1, len(curve) + 1),
                    curve,
                    marker="o",
                    ls="-" if name == "dspark" else "--",
                    label=f"{dataset} / {name}",
                )
        ax.set_title(f"conditional acceptance ({mode})")
        ax.set_xlabel("draft position k")
        ax.set_ylabel("P(k accepted | 1..k-1 accepted)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(results: dict, drafter: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({m for modes in results.values() for m in modes})
    fig, axes = plt.subplots(1, len(modes), figsize=(5 * len(modes), 5), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        ax.plot([0, 1], [0, 1], color="gray", lw=1)
        for dataset, by_mode in results.items():
            s = by_mode.get(mode, {}).get(drafter, {})
            for key, style in (("reliability_before", ":"), ("reliability_after", "-")):
                if key in s:
                    r = s[key]
                    pts = [(p, e) for p, e, c in zip(r["predicted"], r["empirical"], r["count"], strict=True) if c]
                    ax.plot(
                        *zip(*pts, strict=True),
                        marker="o",
                        ls=style,
                        label=f"{dataset} {'after STS' if key.endswith('after') else 'before'}",
                    )
        ax.set_title(f"{drafter} reliability ({mode}): survival prod c_i")
        ax.set_xlabel("predicted P(first k accepted)")
        ax.set_ylabel("empirical rate")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
