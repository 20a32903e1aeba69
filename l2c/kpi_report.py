"""The KPI report as one self-contained HTML file (`l2c kpi --html FILE`): the KPI table and
charts drawn by matplotlib (Agg, no display) as inline SVG. Nothing is loaded from elsewhere: no
scripts, style sheets, fonts or images by URL. Every text from the ledger is escaped."""

import io
import re
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

from markupsafe import Markup

from l2c.documents import render
from l2c.kpi import DURATION_KPIS, NAMES, KpiReport, format_basis, format_value

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TEMPLATE = "kpi_report.html.j2"
COLORS = {"contracted": "#4c72b0", "billed": "#55a868", "collected": "#2a9d8f",
          "credited": "#e9c46a", "written_off": "#c44e52", "still_open": "#b0b0b0"}  # fmt: skip


def _figure(width: float, height: float) -> "Figure":
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: never a display, never a GUI toolkit
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _svg(figure: "Figure", name: str) -> Markup:
    """The figure as an inline <svg> element: text kept as text (no font files), ids salted per
    chart so that several charts in one page never share one."""
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"l2c-kpi-{name}"}):
        out = io.StringIO()
        figure.savefig(out, format="svg", bbox_inches="tight",
                       metadata={"Date": None, "Creator": None, "Format": None, "Type": None})  # fmt: skip
    svg = out.getvalue()
    svg = svg[svg.index("<svg") :]  # no XML declaration or DOCTYPE inside HTML
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.DOTALL)
    # matplotlib escapes the text it draws; the labels here are our own and currency codes.
    return Markup(svg)


def _matplotlib_at_least(major: int, minor: int) -> bool:
    import matplotlib

    found = tuple(int(part) for part in re.findall(r"\d+", matplotlib.__version__)[:2])
    return found >= (major, minor)


def _no_data(ax: object, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes)  # type: ignore[attr-defined]
    ax.set_axis_off()  # type: ignore[attr-defined]


def funnel_chart(report: KpiReport) -> Markup:
    funnel = report.funnel
    stages = [("Leads", funnel.leads), ("Opportunities", funnel.opportunities),
              ("Quoted", funnel.quoted), ("Won (signed)", funnel.won)]  # fmt: skip
    figure = _figure(7, 2.8)
    ax = figure.subplots()
    if funnel.leads == 0:
        _no_data(ax, "no leads captured in the window")
        return _svg(figure, "funnel")
    labels = [name for name, _ in reversed(stages)]
    counts = [count for _, count in reversed(stages)]
    bars = ax.barh(labels, counts, color=["#2a9d8f", "#55a868", "#8172b3", "#4c72b0"])
    for bar, count in zip(bars, counts, strict=True):
        share = Decimal(count) / funnel.leads * 100
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {count} ({share:.0f}%)",
                va="center")  # fmt: skip
    ax.set_xlim(0, max(counts) * 1.25)
    ax.set_xlabel("deals (leads captured in the window)")
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(figure, "funnel")


def cycle_chart(report: KpiReport) -> Markup:
    """Each cycle time's distribution in days: a box (quartiles, median) and every sample."""
    keys = [key for key in DURATION_KPIS if report.durations.get(key)]
    figure = _figure(7, 0.9 + 0.8 * max(len(keys), 1))
    ax = figure.subplots()
    if not keys:
        _no_data(ax, "no cycle times in the window")
        return _svg(figure, "cycles")
    data = [[seconds / 86_400 for seconds in report.durations[key]] for key in keys]
    # Horizontal boxes: `orientation` from matplotlib 3.10, `vert` (deprecated there) before.
    horizontal = {"orientation": "horizontal"} if _matplotlib_at_least(3, 10) else {"vert": False}
    ax.boxplot(data, widths=0.5, showfliers=False, **horizontal)
    for row, values in enumerate(data, start=1):
        ax.plot(values, [row] * len(values), "o", alpha=0.6, color="#4c72b0", markersize=4)
    ax.set_yticks(range(1, len(keys) + 1), [NAMES[key] for key in keys])
    ax.set_xlabel("days")
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(figure, "cycles")


def leakage_charts(report: KpiReport) -> list[tuple[str, Markup]]:
    """Contracted vs billed vs collected, one chart per currency (never one axis for two)."""
    charts = []
    for row in report.leakage:
        figure = _figure(7, 3)
        ax = figure.subplots()
        for label, part in [("Contracted", "contracted"), ("Billed", "billed"),
                            ("Collected", "collected")]:  # fmt: skip
            ax.bar([label], [float(getattr(row, part))], color=COLORS[part])
        # The collection gap (billed - collected), by what became of it.
        bottom = 0.0
        for part in ("credited", "written_off", "still_open"):
            amount = float(getattr(row, part))
            ax.bar(["Uncollected"], [amount], bottom=bottom, color=COLORS[part],
                   label=part.replace("_", " "))  # fmt: skip
            bottom += amount
        ax.set_ylabel(row.currency)
        ax.set_title(f"{row.currency}: {row.periods} billing periods, before tax")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", frameon=False)
        ax.spines[["top", "right"]].set_visible(False)
        charts.append((row.currency, _svg(figure, f"leakage-{row.currency}")))
    return charts


def receivables_chart(report: KpiReport) -> Markup:
    """DSO per currency (days), and invoices issued against credit notes."""
    figure = _figure(7, 2.8)
    left, right = figure.subplots(1, 2)
    dso = [row for row in report.dso if row.dso is not None and row.currency]
    if dso:
        left.bar([str(row.currency) for row in dso], [float(row.dso or 0) for row in dso],
                 color="#8172b3")  # fmt: skip
        left.set_ylabel("days")
        left.set_title("DSO")
        left.spines[["top", "right"]].set_visible(False)
    else:
        _no_data(left, "DSO: nothing billed")
    accuracy = next(k for k in report.kpis if k.key == "invoice_accuracy")
    if accuracy.samples:
        right.bar(["Invoices", "Credit notes"],
                  [int(accuracy.denominator or 0), int(accuracy.numerator or 0)],
                  color=["#55a868", "#e9c46a"])  # fmt: skip
        right.set_title("Billing invoices and credit notes")
        right.spines[["top", "right"]].set_visible(False)
    else:
        _no_data(right, "no billing invoices issued")
    return _svg(figure, "receivables")


def render_html(report: KpiReport) -> str:
    return render(
        TEMPLATE,
        format_value=format_value,
        format_basis=format_basis,
        report=report,
        funnel_svg=funnel_chart(report),
        cycle_svg=cycle_chart(report),
        leakage_svgs=leakage_charts(report),
        receivables_svg=receivables_chart(report),
    )


def write_html(report: KpiReport, path: Path) -> None:
    path.write_text(render_html(report), encoding="utf-8")
