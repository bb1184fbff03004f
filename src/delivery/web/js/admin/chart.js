// The stacked bar chart of daily costs by type: SVG built with DOM calls, one bar per day, one colour per
// type. One tab stop: the arrow keys move between days; the focused or hovered day's figures show in a tooltip.

import { el, svg } from "../lib/dom.js";
import { formatRub } from "../lib/decimal.js";
import { formatDay, formatShortDay, plural, typeLabel } from "../lib/format.js";
import { fraction, labelEvery, niceAxis, stackDays, tickLabel } from "../lib/chart-scale.js";

export const COLOURS = ["#1a56c4", "#e07b00", "#2e8b57", "#a23b9c", "#7a5c2e", "#c0392b"];
const HEIGHT = 260;
const MARGIN = { top: 12, right: 8, bottom: 28, left: 96 };
const PHONE_MARGIN_LEFT = 72;

export const colour = (index) => COLOURS[index % COLOURS.length];

function pieces(n) {
  return `${n}\u00a0${plural(n, "посылка", "посылки", "посылок")}`;
}

/** The day in words: what the tooltip shows and what a screen reader reads on the focused bar. */
export function describeDay(day) {
  const parts = day.segments.map((s) => `${typeLabel(s.type)}: ${formatRub(s.total)}, ${pieces(s.packages)}`);
  return { title: `${formatDay(day.date)} — ${formatRub(day.total)}`, parts };
}

function tooltipFor(container) {
  const tip = el("div", { class: "tooltip", "aria-hidden": "true", hidden: true });
  container.append(tip);
  return {
    show(day, bar) {
      const { title, parts } = describeDay(day);
      tip.replaceChildren(el("p", {}, el("strong", { text: title })), ...parts.map((p) => el("p", { text: p })));
      tip.hidden = false;
      const box = bar.getBoundingClientRect();
      const outer = container.getBoundingClientRect();
      const left = Math.min(Math.max(0, box.left - outer.left + box.width / 2 - tip.offsetWidth / 2), outer.width - tip.offsetWidth);
      tip.style.left = `${Math.max(0, left)}px`;
      tip.style.top = `${Math.max(0, box.top - outer.top - tip.offsetHeight - 6)}px`;
    },
    hide() {
      tip.hidden = true;
    },
  };
}

/** Draw `days` (the API's) into `container`, as wide as it is. */
export function renderChart(container, days) {
  const stacks = stackDays(days);
  const width = Math.max(280, Math.floor(container.clientWidth || 600));
  const left = width < 480 ? PHONE_MARGIN_LEFT : MARGIN.left;
  const plotW = width - left - MARGIN.right;
  const plotH = HEIGHT - MARGIN.top - MARGIN.bottom;
  const axis = niceAxis(stacks.reduce((max, d) => (d.units > max ? d.units : max), 0n), width < 480 ? 4 : 5);
  const y = (units) => MARGIN.top + plotH - fraction(units, axis.top) * plotH;
  const band = plotW / Math.max(stacks.length, 1);
  const barW = Math.max(1, band * 0.72);

  const chart = svg("svg", {
    viewBox: `0 0 ${width} ${HEIGHT}`,
    width,
    height: HEIGHT,
    role: "group",
    "aria-label": `Стоимость доставки по дням, ${formatDay(days[0].date)} — ${formatDay(days[days.length - 1].date)}`,
  });
  for (const tick of axis.ticks) {
    chart.append(
      svg("line", { class: "axis-line", x1: left, x2: width - MARGIN.right, y1: y(tick), y2: y(tick) }),
      svg("text", { x: left - 6, y: y(tick) + 4, "text-anchor": "end", text: tickLabel(tick) }),
    );
  }
  const every = labelEvery(stacks.length, plotW);
  container.replaceChildren();
  const tip = tooltipFor(container);
  const bars = stacks.map((day, i) => {
    const x = left + i * band + (band - barW) / 2;
    const bar = svg(
      "g",
      {
        class: "day",
        role: "img",
        tabindex: "-1",
        "data-date": day.date,
        "data-total": day.total,
        "aria-label": (({ title, parts }) => [title, ...parts].join("; "))(describeDay(day)),
      },
      svg("rect", { class: "day-hit", x: left + i * band, y: MARGIN.top, width: band, height: plotH }),
      ...day.segments.map((s, t) =>
        svg("rect", {
          x,
          width: barW,
          y: y(s.to),
          height: Math.max(0, y(s.from) - y(s.to)),
          fill: colour(t),
          "data-type-id": s.type.id,
          "data-total": s.total,
        }),
      ),
    );
    bar.addEventListener("mouseenter", () => tip.show(day, bar));
    bar.addEventListener("mouseleave", () => tip.hide());
    bar.addEventListener("focus", () => tip.show(day, bar));
    bar.addEventListener("blur", () => tip.hide());
    // Counted from the last day, so that the newest day always has its label and none overlap.
    if ((stacks.length - 1 - i) % every === 0) {
      chart.append(
        svg("text", { x: left + i * band + band / 2, y: HEIGHT - 8, "text-anchor": "middle", text: formatShortDay(day.date) }),
      );
    }
    return bar;
  });
  chart.append(...bars);
  chart.addEventListener("keydown", (event) => moveFocus(event, bars));
  // One tab stop, on the last day; the arrows move from there.
  if (bars.length) bars[bars.length - 1].setAttribute("tabindex", "0");
  container.prepend(chart);
}

function moveFocus(event, bars) {
  const current = bars.indexOf(event.target.closest(".day"));
  if (current < 0) return;
  const next = { ArrowLeft: current - 1, ArrowRight: current + 1, Home: 0, End: bars.length - 1 }[event.key];
  if (next === undefined) return;
  event.preventDefault();
  const target = bars[Math.min(Math.max(next, 0), bars.length - 1)];
  bars.forEach((bar) => bar.setAttribute("tabindex", bar === target ? "0" : "-1"));
  target.focus();
}

/** The legend: a swatch and a name per type, in the bars' order. */
export function legendItems(types) {
  return types.map((type, t) =>
    el(
      "li",
      { "data-type-id": type.id },
      svg("svg", { width: 14, height: 14, "aria-hidden": "true" }, svg("rect", { width: 14, height: 14, rx: 2, fill: colour(t) })),
      typeLabel(type),
    ),
  );
}
