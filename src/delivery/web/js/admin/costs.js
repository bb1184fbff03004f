// Daily cost totals by type over a range: the chart, its legend, and the same figures in a table.

import { $, el } from "../lib/dom.js";
import { showBanner } from "../lib/banner.js";
import { formatRub } from "../lib/decimal.js";
import { formatDay, plural, typeLabel } from "../lib/format.js";
import { lastDays, rangeProblem, rangeTotals, stackDays } from "../lib/chart-scale.js";
import { adminApi, TokenRefused } from "./operator.js";
import { legendItems, renderChart } from "./chart.js";

const DEFAULT_DAYS = 30;
let shown = null; // the days on screen, drawn again when the width changes
let seq = 0;

function figure(total, packages) {
  return [
    el("span", { class: "sum", text: formatRub(total) }),
    el("span", { class: "count", text: `${packages}\u00a0шт.` }),
  ];
}

function renderTable(days) {
  const types = days[0].totals.map((t) => t.type);
  $("costs-head").replaceChildren(
    el("th", { scope: "col", text: "Дата" }),
    ...types.map((type) => el("th", { scope: "col", text: typeLabel(type) })),
    el("th", { scope: "col", text: "Итого" }),
  );
  const stacks = stackDays(days);
  $("costs-body").replaceChildren(
    ...stacks.map((day) =>
      el(
        "tr",
        { "data-date": day.date },
        el("th", { scope: "row", text: formatDay(day.date) }),
        ...day.segments.map((s) =>
          el("td", { "data-type-id": s.type.id, "data-total": s.total, "data-packages": s.packages }, ...figure(s.total, s.packages)),
        ),
        el("td", { "data-total": day.total, "data-packages": day.packages }, ...figure(day.total, day.packages)),
      ),
    ),
  );
  const sums = rangeTotals(days);
  $("costs-foot").replaceChildren(
    el(
      "tr",
      {},
      el("th", { scope: "row", text: "За период" }),
      ...sums.byType.map((t) =>
        el("td", { "data-type-id": t.type.id, "data-total": t.total, "data-packages": t.packages }, ...figure(t.total, t.packages)),
      ),
      el("td", { "data-total": sums.total, "data-packages": sums.packages }, ...figure(sums.total, sums.packages)),
    ),
  );
  $("costs-table").hidden = false;
  return sums;
}

function render(answer) {
  shown = answer.days;
  const sums = renderTable(answer.days);
  $("legend").replaceChildren(...legendItems(answer.days[0].totals.map((t) => t.type)));
  $("chart-figure").hidden = false;
  renderChart($("chart"), answer.days);
  const n = answer.days.length;
  $("costs-status").textContent =
    `${formatDay(answer.from)} — ${formatDay(answer.to)}: ${n} ${plural(n, "день", "дня", "дней")}, ` +
    `${sums.packages} ${plural(sums.packages, "посылка", "посылки", "посылок")}, ${formatRub(sums.total)}`;
}

function setRangeError(message, field) {
  $("range-error").textContent = message || "";
  $("range-error").hidden = !message;
  for (const name of ["from", "to"]) {
    const input = $(`range-${name}`);
    if (message && name === field) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
}

/** Load the range in the form's fields and show it. */
export async function loadCosts() {
  const from = $("range-from").value;
  const to = $("range-to").value;
  const problem = rangeProblem(from, to);
  setRangeError(problem && problem.message, problem && problem.field);
  if (problem) {
    $(`range-${problem.field}`).focus();
    return;
  }
  const mine = ++seq;
  $("costs-status").textContent = "Загрузка…";
  let result;
  try {
    result = await adminApi("GET", `/admin/stats/daily-costs/?${new URLSearchParams({ from, to })}`);
  } catch (error) {
    if (error instanceof TokenRefused) return;
    if (mine === seq) {
      showBanner(error);
      $("costs-status").textContent = "Данные не загрузились.";
    }
    return;
  }
  if (mine !== seq) return; // another range was asked for meanwhile
  if (result.status === 422) {
    const first = (result.data && result.data.detail && result.data.detail[0]) || {};
    const field = Array.isArray(first.loc) ? first.loc[first.loc.length - 1] : "from";
    setRangeError(`Сервер не принял период: ${first.msg || "ошибка в датах"}`, field);
    $("costs-status").textContent = "";
    return;
  }
  if (result.status !== 200 || !result.data || !Array.isArray(result.data.days) || !result.data.days.length) {
    $("costs-status").textContent = `Данные не загрузились (ответ ${result.status}).`;
    return;
  }
  render(result.data);
}

function setLastDays(n) {
  const range = lastDays(n);
  $("range-from").value = range.from;
  $("range-to").value = range.to;
}

export function startCosts() {
  setLastDays(DEFAULT_DAYS);
  $("range-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadCosts();
  });
  $("range-30").addEventListener("click", () => {
    setLastDays(DEFAULT_DAYS);
    loadCosts();
  });
  let width = 0;
  new ResizeObserver(() => {
    const now = $("chart").clientWidth;
    if (shown && now !== width) renderChart($("chart"), shown);
    width = now;
  }).observe($("chart"));
}
