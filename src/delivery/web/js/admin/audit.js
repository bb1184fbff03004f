// The audit trail ("Журнал"): who did what and when, newest first, by pages, filtered by operator and days.

import { $, el } from "../lib/dom.js";
import { showBanner } from "../lib/banner.js";
import { formatDateTime, plural } from "../lib/format.js";
import { pager } from "../lib/paging.js";
import { actionLabel, objectLabel, outcomeLabel } from "./audit-text.js";
import { adminApi, TokenRefused } from "./operator.js";

const SIZE = 20;
const DAY = /^\d{4}-\d{2}-\d{2}$/;
let page = 1;
let filters = {};
let sequence = 0; // an answer to an older request is dropped

function query() {
  const params = new URLSearchParams({ page: String(page), size: String(SIZE) });
  for (const [name, value] of Object.entries(filters)) if (value) params.set(name, value);
  return params.toString();
}

function row(entry) {
  const outcome = outcomeLabel(entry.outcome);
  return el(
    "tr",
    { "data-action": entry.action, "data-operator": entry.operator, "data-outcome": entry.outcome },
    el("td", { text: formatDateTime(entry.at), title: entry.at }),
    el("td", { text: entry.operator }),
    el("td", { text: actionLabel(entry.action) }),
    el("td", { text: objectLabel(entry.object) }),
    el("td", { class: `outcome-${outcome.kind || "other"}`, text: outcome.text }),
    el("td", {}, entry.request_id == null ? "—" : el("code", { class: "request-id", text: entry.request_id })),
  );
}

function show(data) {
  $("audit-body").replaceChildren(...data.items.map(row));
  $("audit-table").hidden = data.items.length === 0;
  const filtered = Object.values(filters).some(Boolean);
  $("audit-status").textContent =
    data.total === 0
      ? filtered
        ? "Нет записей с такими фильтрами."
        : "Записей пока нет."
      : `${filtered ? "Найдено" : "Всего"}: ${data.total} ${plural(data.total, "запись", "записи", "записей")}`;
  const view = pager(data);
  $("audit-pager").hidden = view.hidden;
  $("audit-page").textContent = view.info;
  $("audit-prev").disabled = view.prevDisabled;
  $("audit-next").disabled = view.nextDisabled;
}

export async function loadAudit() {
  const mine = ++sequence;
  $("audit-table").setAttribute("aria-busy", "true");
  try {
    const result = await adminApi("GET", `/admin/audit/?${query()}`);
    if (mine !== sequence) return;
    if (result.status === 200 && result.data) {
      if (!result.data.items.length && result.data.total > 0 && page > result.data.pages) {
        page = result.data.pages; // fewer entries match now: show the last page there is
        loadAudit();
        return;
      }
      show(result.data);
    } else {
      $("audit-status").textContent = `Журнал не загрузился (ответ ${result.status}).`;
    }
  } catch (error) {
    if (error instanceof TokenRefused || mine !== sequence) return;
    showBanner(error);
    $("audit-status").textContent = "Журнал не загрузился: нет ответа сервера.";
  } finally {
    if (mine === sequence) $("audit-table").removeAttribute("aria-busy");
  }
}

function readFilters() {
  const operator = $("audit-operator").value.trim();
  const from = $("audit-from").value;
  const to = $("audit-to").value;
  const error = $("audit-error");
  let message = "";
  if ((from && !DAY.test(from)) || (to && !DAY.test(to))) message = "Введите дату полностью";
  else if (from && to && from > to) message = "Дата «от» позже даты «до»";
  error.textContent = message;
  error.hidden = !message;
  return message ? null : { operator, from, to };
}

export function startAudit() {
  $("audit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const read = readFilters();
    if (!read) return;
    filters = read;
    page = 1;
    loadAudit();
  });
  $("audit-reset").addEventListener("click", () => {
    $("audit-form").reset();
    $("audit-error").hidden = true;
    filters = {};
    page = 1;
    loadAudit();
  });
  $("audit-refresh").addEventListener("click", loadAudit);
  $("audit-prev").addEventListener("click", () => {
    page = Math.max(1, page - 1);
    loadAudit();
  });
  $("audit-next").addEventListener("click", () => {
    page += 1;
    loadAudit();
  });
}
